"""On-device document retrieval: loaders, chunking, a SQLite store and hybrid search."""
