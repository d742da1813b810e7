"""One file at a time: where its data is, how to copy it sparse-safe, how to put it in place.

- :mod:`synfast.files.sparse` finds a file's data with SEEK_DATA/SEEK_HOLE and
  never reads a hole; a copy tries, in order, FICLONE (share the blocks), then
  per data extent ``copy_file_range`` (only where it is a server-side copy, or
  when asked), ``splice`` through a 1 MiB pipe, or ``pread``/``pwrite``; holes
  become holes, a trailing hole an ``ftruncate``.  A source that changes size
  or mtime while it is copied is an error, never a torn copy.  Owner, mode and
  times are applied to the open file.
- :mod:`synfast.files.durable` is how every writer in synfast puts a result in
  place: build under a hidden temporary sibling, fsync, rename without
  replacing (``RENAME_NOREPLACE``), fsync the directory.

Each module is the only importer of its extension (``_sparse``, ``_durable``),
whose source is under ``ext/files/``.  Nothing here knows about LMDB.
"""
