"""Real local test bed for Kompression: Kubernetes (with kwok nodes), S3, Prometheus, helm.

See tests/testbed/README.md. Fixtures live in `testbed.fixtures`; tests/conftest.py loads them.
"""
