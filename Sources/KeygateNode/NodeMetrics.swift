import KeygateControlPlane
import KeygateCore
import KeygateDataPlane
import KeygateMetrics
import KeygateRedis

/// The node's `/metrics`: every counter the parts keep, written in Prometheus text format at scrape
/// time. Labels come from fixed sets only (plane, result, reason, code); nothing per key (rule 15).
enum NodeMetrics {
    static func render(_ node: KeygateNode) -> String {
        var text = PrometheusText()
        let data = node.dataPlane.metrics
        let control = node.controlPlane.metrics
        let verifier = node.verifier.metrics
        let cache = verifier.cache
        let invalidation = node.invalidation.metrics
        let usage = node.flusher.metrics

        text.gauge("keygate_build_info", help: "Always 1; the labels carry the version.",
                   samples: [([("version", KeygateNode.version)], 1)])

        // Refusal reasons are merged into `invalid` unless the operator opted in (see `publicLabel`).
        let detailed = node.configuration.metricsRefusalReasons
        var dataByLabel: [(label: String, value: Double)] = []
        for outcome in DataPlaneMetrics.Outcome.allCases {
            let label = detailed ? outcome.label : outcome.publicLabel
            if let index = dataByLabel.firstIndex(where: { $0.label == label }) {
                dataByLabel[index].value += Double(data.value(outcome))
            } else {
                dataByLabel.append((label, Double(data.value(outcome))))
            }
        }
        let dataSamples = dataByLabel.map { ([("plane", "data"), ("result", $0.label)], $0.value) }
        let controlSamples = ControlPlaneMetrics.Outcome.allCases.map { ([("plane", "control"), ("result", $0.label)], Double(control.value($0))) }
        text.counter("keygate_verify_result_total", help: "Verification results by plane and outcome.",
                     samples: dataSamples + controlSamples)
        text.histogram("keygate_verify_duration_seconds", help: "Time from reading a key to its verdict (cache hit or Redis lookup).",
                       samples: [([("plane", "data")], data.latency.snapshot()), ([("plane", "control")], control.latency.snapshot())])
        text.counter("keygate_verify_stale_served_total", help: "Valid answers served from a stale entry while Redis was unreachable (stale-if-error).",
                     verifier.staleServed.load(ordering: .relaxed))
        text.counter("keygate_verify_shed_total", help: "Requests answered 503 because too many Redis lookups were in flight.",
                     verifier.shed.load(ordering: .relaxed))
        text.counter("keygate_verify_malformed_records_total", help: "Key records in Redis that could not be decoded.",
                     verifier.malformedRecords.load(ordering: .relaxed))

        text.counter("keygate_cache_hits_total", help: "Verdict cache hits (positive and negative).", cache.hits.load(ordering: .relaxed))
        text.counter("keygate_cache_misses_total", help: "Verdict cache misses.", cache.misses.load(ordering: .relaxed))
        text.counter("keygate_cache_lookups_total", help: "Redis lookups sent for cache misses (single-flight leaders).",
                     verifier.lookups.load(ordering: .relaxed))
        text.gauge("keygate_cache_entries", help: "Entries in the verdict caches.",
                   samples: [([("cache", "positive")], Double(node.verifier.cache.count)),
                             ([("cache", "negative")], Double(node.verifier.cache.negativeCount))])
        text.counter("keygate_cache_evictions_total", help: "Entries evicted to make room (LRU).", cache.evictions.load(ordering: .relaxed))
        text.counter("keygate_cache_placeholder_discards_total", help: "Lookups not cached because an invalidation raced them.",
                     cache.placeholderDiscards.load(ordering: .relaxed))
        text.gauge("keygate_cache_generation", help: "Cache generation; bumped whenever the invalidation path is lost.",
                   Double(node.verifier.cache.generation))
        text.gauge("keygate_cache_trusted", help: "1 while the cache is trusted (invalidation channel up and caught up).",
                   node.verifier.cache.isTrusted ? 1 : 0)
        text.counter("keygate_cache_flush_total", help: "Whole-cache flushes by reason.",
                     samples: [([("reason", "replay_gap")], Double(invalidation.flushesReplayGap.load(ordering: .relaxed))),
                               ([("reason", "no_baseline")], Double(invalidation.flushesNoBaseline.load(ordering: .relaxed))),
                               ([("reason", "master_change")], Double(invalidation.flushesMasterChange.load(ordering: .relaxed)))])

        text.gauge("keygate_invalidation_channel_up", help: "1 while subscribed to the invalidation channel and caught up.",
                   invalidation.channelUp.load(ordering: .relaxed) ? 1 : 0)
        text.gauge("keygate_invalidation_seconds_since_last_pong", help: "Seconds since the subscriber connection last answered a ping (-1: never).",
                   node.invalidation.secondsSinceLastPong ?? -1)
        text.counter("keygate_invalidations_received_total", help: "Invalidation messages received.", invalidation.received.load(ordering: .relaxed))
        text.counter("keygate_invalidations_applied_total", help: "Cache entries evicted by invalidations.", cache.invalidationsApplied.load(ordering: .relaxed))
        text.counter("keygate_invalidation_losses_total", help: "Times the invalidation path was lost (the cache turned suspect).",
                     invalidation.losses.load(ordering: .relaxed))
        text.counter("keygate_invalidation_replays_total", help: "Stream replays after reconnecting.", invalidation.replays.load(ordering: .relaxed))
        text.counter("keygate_invalidation_replayed_events_total", help: "Events applied from Stream replays.",
                     invalidation.replayedEvents.load(ordering: .relaxed))

        text.histogram("keygate_redis_command_duration_seconds", help: "Redis command (or pipeline) latency on the node's data connections.",
                       samples: [([], node.redis.metrics.commandLatency.snapshot())])
        text.counter("keygate_redis_command_errors_total", help: "Failed Redis commands by error code.",
                     samples: node.redis.metrics.errorCounts.map { ([("code", $0.code)], Double($0.count)) })

        let topology = node.redis.topology
        text.gauge("keygate_redis_master_up", help: "1 while the node holds a connection to a writable master (ROLE checked on connect).",
                   node.redis.isConnected ? 1 : 0)
        text.counter("keygate_redis_master_changes_total", help: "Times the node started talking to a different master (new run_id or address); each flushes the verdict cache.",
                     UInt64(topology.masterChanges))
        text.counter("keygate_redis_sentinel_switches_total", help: "+switch-master announcements for our master received from a Sentinel (0 without Sentinel).",
                     node.sentinelWatcher?.switchesAnnounced ?? 0)
        // Redis Cluster routing (zero on other topologies), over both of the node's clients.
        let clients = [node.redis.metrics, node.adminStore.redis.metrics]
        text.counter("keygate_redis_cluster_redirects_total", help: "MOVED and ASK replies followed (Redis Cluster: slots moved or moving).",
                     samples: [([("kind", "moved")], Double(clients.reduce(0) { $0 + $1.movedRedirects.load() })),
                               ([("kind", "ask")], Double(clients.reduce(0) { $0 + $1.askRedirects.load() }))])
        text.counter("keygate_redis_cluster_retries_total", help: "Commands retried after TRYAGAIN, CLUSTERDOWN, LOADING or an unreachable primary.",
                     clients.reduce(0) { $0 + $1.clusterRetries.load() })
        text.counter("keygate_redis_cluster_slot_map_refreshes_total", help: "Slot maps fetched with CLUSTER SLOTS (result=failed: no node answered).",
                     samples: [([("result", "ok")], Double(clients.reduce(0) { $0 + $1.slotMapRefreshes.load() })),
                               ([("result", "failed")], Double(clients.reduce(0) { $0 + $1.slotMapRefreshFailures.load() }))])
        text.gauge("keygate_redis_cluster_slots_covered", help: "Slots the last slot map assigns to a primary (16384 when the Cluster is whole; 0 without Cluster).",
                   Double(node.redis.clusterSlotMap?.coveredSlots ?? 0))
        text.counter("keygate_store_repairs_total", help: "Half-done changes this node's repair pass finished (completed: applied, now logged) or dropped (never applied).",
                     samples: [([("outcome", "completed")], Double(node.repair.metrics.completed.load(ordering: .relaxed))),
                               ([("outcome", "dropped")], Double(node.repair.metrics.dropped.load(ordering: .relaxed)))])
        text.counter("keygate_store_not_durable_total", help: "Changes and usage batches the master applied but fewer replicas than --redis-wait-replicas confirmed (answered 503 not-replicated, or retried).",
                     UInt64(node.adminStore.durability.notReplicated.load(ordering: .relaxed) + node.store.durability.notReplicated.load(ordering: .relaxed)))

        text.gauge("keygate_usage_pending_keys", help: "Keys with usage counts not yet acknowledged by Redis.", Double(usage.pendingKeys.load(ordering: .relaxed)))
        text.counter("keygate_usage_flushed_batches_total", help: "Usage batches acknowledged by Redis.", usage.flushedBatches.load(ordering: .relaxed))
        text.counter("keygate_usage_unconfirmed_batches_total", help: "Usage batches the primary applied but no replica confirmed within 10 s (after a failover the new primary may have no replica yet); counted as they are.",
                     usage.unconfirmedBatches.load(ordering: .relaxed))
        text.counter("keygate_usage_duplicate_batches_total", help: "Retried usage batches Redis had already applied (counted once).",
                     usage.duplicateBatches.load(ordering: .relaxed))
        text.counter("keygate_usage_flush_failures_total", help: "Usage flushes that failed and will be retried.", usage.flushFailures.load(ordering: .relaxed))
        text.counter("keygate_usage_spilled_total", help: "Key counts written to the spill file while Redis was failing.", usage.spilled.load(ordering: .relaxed))
        text.counter("keygate_usage_dropped_total", help: "Key counts dropped (no spill file, or it failed). Should stay 0.", usage.dropped.load(ordering: .relaxed))

        let limits = node.rateLimiter.snapshot
        text.counter("keygate_ratelimit_decisions_total", help: "Rate-limit decisions, per limit checked (a request against two limits counts twice); result=local: decided with the node's local share while Redis could not be asked (also counted as admitted or refused).",
                     samples: [([("result", "admitted")], Double(limits.admitted)), ([("result", "refused")], Double(limits.refused)),
                               ([("result", "local")], Double(limits.localDecisions))])
        text.counter("keygate_ratelimit_leases_total", help: "Token leases asked of Redis (result=failed: Redis could not be asked).",
                     samples: [([("result", "ok")], Double(limits.leases - min(limits.leases, limits.leaseFailures))),
                               ([("result", "failed")], Double(limits.leaseFailures))])
        text.counter("keygate_ratelimit_tokens_leased_total", help: "Rate-limit tokens Redis handed to this node.", limits.tokensLeased)

        let credits = node.credits.snapshot
        text.counter("keygate_credits_decisions_total", help: "Credit decisions: admitted, exhausted (429 usage_exceeded) or unavailable (Redis could not be asked and no credit was held: 503).",
                     samples: [([("result", "admitted")], Double(credits.admitted)), ([("result", "exhausted")], Double(credits.exhausted)),
                               ([("result", "unavailable")], Double(credits.unavailable))])
        text.counter("keygate_credits_leases_total", help: "Credit leases asked of Redis (result=failed: Redis could not be asked).",
                     samples: [([("result", "ok")], Double(credits.leases - min(credits.leases, credits.leaseFailures))),
                               ([("result", "failed")], Double(credits.leaseFailures))])
        text.counter("keygate_credits_leased_total", help: "Credits Redis handed to this node.", credits.creditsLeased)
        text.counter("keygate_credits_returned_total", help: "Unspent credits this node gave back to their balance (idle keys, shutdown).", credits.creditsReturned)
        text.counter("keygate_credits_dropped_total", help: "Unspent credits not given back: the balance was refilled or set anew meanwhile, or Redis could not be reached.",
                     credits.creditsDropped)

        text.gauge("keygate_data_plane_open_connections", help: "Open data-plane connections.", Double(data.openConnections.load(ordering: .relaxed)))
        text.counter("keygate_data_plane_refused_connections_total", help: "Connections answered 503 because the connection cap was reached.",
                     data.refusedConnections.load(ordering: .relaxed))
        text.counter("keygate_data_plane_request_timeouts_total", help: "Connections answered 408 and closed: a request did not arrive within the request timeout.",
                     data.requestTimeouts.load(ordering: .relaxed))
        if node.dataPlane.settings.gateway.isEnabled {
            text.counter("keygate_gateway_responses_total", help: "Gateway mode: responses to proxied requests by status class (the gateway's own 502 and 504 included).",
                         samples: (1...5).map { ([("class", "\($0)xx")], Double(data.upstreamResponses(statusClass: $0))) })
            text.histogram("keygate_gateway_upstream_duration_seconds", help: "Gateway mode: from choosing an upstream server to the end of its response.",
                           samples: [([], data.upstreamLatency.snapshot())])
            text.counter("keygate_gateway_errors_total", help: "Gateway mode: proxied requests answered 502 or 504, or cut short because the upstream closed mid-response.",
                         UInt64(data.gatewayErrors.load(ordering: .relaxed)))
            text.counter("keygate_gateway_connect_failures_total", help: "Gateway mode: connections to an upstream server that failed or timed out (the server is skipped for a while).",
                         UInt64(data.gatewayConnectFailures.load(ordering: .relaxed)))
        }
        return text.text
    }
}
