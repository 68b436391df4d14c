"""Pushing a packed archive's image to an OCI / Docker registry (Distribution API v2) without ``docker load``.

``client`` (image references, credentials, auth and the HTTP calls), ``image`` (the image inside an archive:
config, layers, offsets) and ``push`` (the push job: ``push_archive``). Nothing is re-exported here.
"""
