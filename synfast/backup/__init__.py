"""Backups of a live service directory, and everything done with them later.

A backup (:mod:`~synfast.backup.run`) is a directory that is complete exactly
when ``.synfast/manifest.json`` is in it:

1. check the arguments, report (or remove) unfinished backups beside the
   destination (:mod:`~synfast.backup.partials`), run ``--pre-cmd``
   (:mod:`~synfast.backup.hooks`);
2. walk the source, leaving out ``tmp/``, ``backups/`` and ``--exclude`` globs;
3. in ``DST.partial``, write the marker, begin every environment's snapshot
   together and copy everything (:mod:`~synfast.backup.stage`), paced by
   ``--bwlimit`` where asked (:mod:`~synfast.backup.pacing`), each output
   checksummed (:mod:`~synfast.backup.checksum`) and fsynced as it is finished;
4. write the manifest last (:mod:`~synfast.backup.manifest`), rename
   ``DST.partial`` to ``DST``, run ``--post-cmd``.

The options of a backup are one object that the manifest records
(:mod:`~synfast.backup.options`).  :mod:`~synfast.backup.verify` checks a backup
against its manifest (every checksum, every environment walked),
:mod:`~synfast.backup.restore` puts one back without losing the old directory,
and :mod:`~synfast.backup.retention` lists and prunes backups by their
manifest's time.  The checksum's extension ``_hash`` (source under
``ext/backup/``) is imported only by ``checksum``.
"""
