"""The aggregator: the stream half of the pipeline. It reads log partitions in micro-batches,
rolls them up with the kernel and writes rollup deltas and its offsets in one transaction."""
