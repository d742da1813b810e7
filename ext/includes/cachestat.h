/* cachestat(2) (Linux 6.5): how many pages of a file range are in the page
 * cache, without mapping or reading them.  glibc has no wrapper and older
 * kernel headers no number; the number is 451 on every architecture (the
 * syscall was added after the tables were unified).  sf_cached_pages returns
 * the count, or -1 with errno set (ENOSYS on an older kernel).
 */
#ifndef SYNFAST_CACHESTAT_H
#define SYNFAST_CACHESTAT_H

#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>

#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

struct sf_cachestat_range { uint64_t off; uint64_t len; };
struct sf_cachestat {
    uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

static inline int64_t sf_cached_pages(int fd, uint64_t off, uint64_t len)
{
    struct sf_cachestat_range range = { off, len };
    struct sf_cachestat cs;
    if (syscall(__NR_cachestat, fd, &range, &cs, 0) != 0)
        return -1;
    return (int64_t)cs.nr_cache;
}

#endif
