"""The offline engine on a Dask distributed cluster: files read as tasks, activity exchanged as
Parquet, fingerprints and decisions computed per group of devices."""
