"""Model packs: manifests and the tool that builds them from registry packages."""
