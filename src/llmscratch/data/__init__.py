"""Data: text and documents from files, token shards on disk, batches of token windows.

    corpus.py       the embedded Shakespeare corpus, reading text, the held-out split
    documents.py    .txt/.jsonl/.parquet documents as a stream; finding input files
    text_files.py   a text file in blocks cut where no pre-token spans them
    prepare.py      `llmscratch data prepare`: files -> token shards, in parallel
    manifest.py     what a prepared directory's shards are, checked by hash
    loader.py       TokenWindows: deterministic, resumable batches for any number of ranks
"""
