"""Data: text, documents and token shards for pretraining; labeled texts, instructions
and batches of examples for fine-tuning.

    corpus.py             the embedded Shakespeare corpus, reading text, the held-out split
    documents.py          .txt/.jsonl/.parquet documents as a stream; finding input files
    text_files.py         a text file in blocks cut where no pre-token spans them
    prepare.py            `llmscratch data prepare`: files -> token shards, in parallel
    manifest.py           what a prepared directory's shards are, checked by hash
    loader.py             TokenWindows: deterministic, resumable batches for any number of ranks
    labeled_files.py      labeled texts from CSV/TSV/JSONL and the SMS Spam Collection; splits
    genres.py             the offline classification task: a passage's genre, split by play
    instruction_files.py  Alpaca JSON/JSONL and chat JSONL as Conversations; the Alpaca prompt
    chat_examples.py      ChatEncoder: a Conversation as token ids, targets on the reply
    synthetic_tasks.py    checkable instruction tasks, rewards and preference pairs
    examples.py           fine-tuning Examples in padded or packed Batches, resumable
"""
