# <stdio.h>: renameat2, which glibc (2.28 and later) declares there with
# _GNU_SOURCE; its flags come from <linux/fs.h> (clinux_fs).  Declarations only.

cdef extern from "<stdio.h>" nogil:
    int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                  unsigned int flags)
