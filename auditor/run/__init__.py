"""Running an audit: the configuration, loading the subject, the streamed pipeline over the stages, shards
and memory, determinism, and the runner that writes the outputs and returns the verdict."""
