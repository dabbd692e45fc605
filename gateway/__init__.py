"""The gateway: the one public endpoint, ``POST /classify``, in front of the head service."""
