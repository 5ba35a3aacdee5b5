"""Static checks of the deployment files: docker-compose.yml, the Dockerfile and
.dockerignore, fly/*.toml, versions.env and the ops files' header comments."""
