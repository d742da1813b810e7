/* XXH3-128 from the system's libxxhash (found with pkg-config).
 *
 * Where the library exports its x86 dispatch symbols (Debian's does), the
 * update picks AVX2 at run time: measured 20.5 GB/s per core on this
 * project's machine against 14.2 for the library's plain SSE2 build
 * (bench/hash_choice.py, docs/bench/checksums.md).  setup.py defines
 * SYNFAST_XXH_DISPATCH when the header is present on x86-64.
 */
#ifndef SYNFAST_XXH_SHIM_H
#define SYNFAST_XXH_SHIM_H

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#if defined(SYNFAST_XXH_DISPATCH)
#include <xxh_x86dispatch.h>
#define sf_xxh3_128_update XXH3_128bits_update_dispatch
#else
#define sf_xxh3_128_update XXH3_128bits_update
#endif

#endif
