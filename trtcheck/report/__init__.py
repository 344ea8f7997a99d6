"""Reports of a comparison: a rich terminal view and a versioned JSON document."""
