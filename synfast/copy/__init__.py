"""``synfast copy`` and ``synfast scan``: a file, an environment or a whole tree.

1. Plan (:mod:`~synfast.copy.walk`): walk the source without following
   symlinks and classify every entry by content (directory, regular file, LMDB
   environment, symlink, special file); a damaged environment stops here.
2. Build under a hidden temporary sibling of the destination
   (:mod:`~synfast.copy.tree`): directories first, then the snapshots of every
   environment begun together, then files and environments in parallel,
   largest first (small files one after another by one worker), symlinks, and
   directory metadata deepest first.
3. Place: rename the finished copy to its final name without replacing
   anything (``--force`` swaps it in).  An interrupted or failed copy removes
   its temporary and leaves the final name as it was.

:mod:`~synfast.copy.scan` reports what a tree really holds (apparent against
allocated size, extents, map size against the part in use) from metadata and
meta pages only, so it is safe on a live service.
"""
