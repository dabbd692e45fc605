"""HTTP services around the splitdnn library: head (device), tail (edge) and shared parts."""
