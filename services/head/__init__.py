"""The head service: runs on the device, next to the camera."""
