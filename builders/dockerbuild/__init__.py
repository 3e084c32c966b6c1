"""The docker builder (`stepkit docker`, image stepkit-docker): build, tag and push with a Docker daemon.

Written with the SDK (stepkit.builder) and the docker SDK; SPEC §6.4. The module is not
called `docker` so it never shadows the docker SDK's.
"""
