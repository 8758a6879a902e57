-- The clickhouselogger table on a ClickHouse cluster (apisix-edge-runner).
-- For one server, use conf/clickhouse-schema.sql instead.
--
-- Two tables on every server of the cluster:
--   edge_access_log_local  holds the rows of one shard (a MergeTree, or a
--                          ReplicatedMergeTree when shards have replicas);
--   edge_access_log        a Distributed table over it: the table the logger
--                          inserts into (clickhouse.table) and the one you
--                          query. It stores nothing itself; each inserted row
--                          goes to one shard, chosen by rand().
-- List every server in clickhouse.addrs: the logger sends each batch to the
-- next server in turn and fails over to another when one is down
-- (docs/clickhouselogger.md, "Cluster").
--
-- Replace edge_cluster with your cluster's name in remote_servers (three
-- places), and `default` with your clickhouse.database. ON CLUSTER runs each
-- statement on every server of the cluster; it needs ZooKeeper or ClickHouse
-- Keeper (<distributed_ddl> in the server config). Without them, run the
-- statements without "ON CLUSTER edge_cluster" on each server in turn.
--
-- Works on ClickHouse 18.16 (Debian's package) and on current releases.
-- The column list is the one of conf/clickhouse-schema.sql (a test keeps
-- them identical); its notes on types and on upgrading an older table apply
-- here too: run an ALTER TABLE ... ADD COLUMN ON CLUSTER on the local table
-- first, then the same on the Distributed table.
--
-- Sharded, without replicas (remote_servers: one replica per shard,
-- <internal_replication>false</internal_replication>), as below.
--
-- With replicas, make the local table replicated and let each shard
-- replicate itself (<internal_replication>true</internal_replication>, so
-- the Distributed table writes one replica per shard); define the macros
-- {shard} and {replica} on each server:
--   ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/default/edge_access_log_local', '{replica}')
--   PARTITION BY toYYYYMMDD(ts)
--   ORDER BY (route_id, ts)
--
-- Asynchronous inserts: by default the server that receives a batch writes
-- its own shard's rows and queues the other shards' rows on its disk, then
-- sends them in the background (the logger counts the rows inserted once
-- that server answers). A shard that is down therefore does not stop the
-- logging: its rows wait in the other servers' queues. Leave
-- insert_distributed_sync at 0 for the logger's user; see the doc for why.

CREATE TABLE IF NOT EXISTS `default`.`edge_access_log_local` ON CLUSTER edge_cluster (
    ts                 DateTime,        -- when the runner saw the response (UTC, seconds)
    route_id           String,          -- APISIX $route_id, or the route conf's route_id
    method             String,
    host               String,          -- $host
    path               String,          -- $uri: the normalized path, no query string
    status             UInt16,          -- the upstream's status as APISIX got it
    latency_ms         UInt32,          -- APISIX $request_time, in ms
    client_ip          String,          -- $remote_addr (after APISIX's real-ip plugin, if any)
    user_agent         String,
    request_id         String,          -- X-Request-Id (APISIX request-id plugin), else nginx $request_id
    tenant             String,          -- clickhouse.tenant_header (default X-Tenant-ID)
    consumer           String,          -- X-Edge-Consumer: the JWT subject verified by jwtcache
    req_header_names   Array(String),   -- a route's req_headers, lower-cased ...
    req_header_values  Array(String),   -- ... and their values, same order ("" when absent)
    resp_header_names  Array(String),   -- a route's resp_headers, lower-cased ...
    resp_header_values Array(String),   -- ... and the upstream's values
    -- The log-phase path (clickhouse.ingest, APISIX's http-logger) fills
    -- these; a post-resp row has their defaults.
    source             String DEFAULT 'post_resp', -- post_resp or http_logger
    service_id         String,          -- $service_id
    upstream_addr      String,          -- $upstream_addr ("" when no upstream was called)
    upstream_latency_ms UInt32,         -- $upstream_response_time (summed over tries), in ms
    apisix_latency_ms  UInt32,          -- total latency minus upstream latency, in ms
    bytes_sent         UInt64,          -- $bytes_sent: the whole response, headers included
    request_length     UInt64,          -- $request_length: the whole request, headers included
    rl_status          String,          -- X-RateLimit-Status sent (degraded), else ""
    rl_limit           Int64 DEFAULT -1, -- X-RateLimit-Limit sent, -1 when none
    rl_remaining       Int64 DEFAULT -1, -- X-RateLimit-Remaining sent, -1 when none
    retry_after        Int64 DEFAULT -1  -- Retry-After sent (seconds), -1 when none
) ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(ts)
ORDER BY (route_id, ts);

CREATE TABLE IF NOT EXISTS `default`.`edge_access_log` ON CLUSTER edge_cluster
AS `default`.`edge_access_log_local`
ENGINE = Distributed('edge_cluster', 'default', 'edge_access_log_local', rand());
