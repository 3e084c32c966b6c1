"""Reading images from OCI / Docker registries: references, the registry client, image layers."""
