"""NoNN member service: one student on the image, its pooled features in the wire format."""
