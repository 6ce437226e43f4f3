"""Where topics live: in memory (topics.py) or on disk (disk_topics.py over
segments.py, records.py, recovery.py, datadir.py), behind one interface
(storage.py), every file call through files.py; docs/storage.md."""
