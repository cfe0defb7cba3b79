# Multi-stage image of a Keygate node. Build: docker build -t keygate:0.1.0 .
# (No Docker engine runs on our build machines: this file is reviewed, not built, in CI. See README.)

# The toolchain the project is built and tested with (Swift 6.3; Hummingbird needs 6.2 or newer).
FROM swift:6.3-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libhiredis-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits do not refetch them.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
# The manifest declares the test targets too; SwiftPM wants their folders to exist.
COPY Tests ./Tests
COPY scripts/build-release.sh ./scripts/
COPY scripts/lib/packages.sh ./scripts/lib/
RUN install -D -m 0755 "$(scripts/build-release.sh --static-swift-stdlib)" /out/keygate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libhiredis0.14 libssl3 ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o 65532 -g 65532 /var/lib/keygate
COPY --from=build /out/keygate /usr/local/bin/keygate
USER 65532:65532
ENV KEYGATE_HOST=0.0.0.0 \
    KEYGATE_USAGE_SPILL_PATH=/var/lib/keygate/usage-spill.jsonl
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]
