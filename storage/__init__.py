"""The artifact store: forms snapshots, model registry, runs (Zarr + Parquet), atomic publish."""
