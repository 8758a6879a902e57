-- Table of the clickhouselogger plugin (apisix-edge-runner), for operators
-- who create it themselves (clickhouse.create_table: false, the default).
-- Replace `default`.`edge_access_log` with your clickhouse.database and
-- clickhouse.table (or a route conf's "table").
--
-- This DDL works on every server from ClickHouse 18.16 (Debian's package)
-- to current releases. The logger names its columns in every INSERT, so you
-- may add columns of your own, with a DEFAULT, or MATERIALIZED columns.
--
-- On ClickHouse 21 and later, create_table uses better types, and so may
-- you (the logger's INSERT is the same):
--   ts        DateTime64(3, 'UTC')        -- millisecond timestamps
--   route_id, method, host, tenant
--             LowCardinality(String)      -- few distinct values: smaller, faster
-- and, if you want them:
--   TTL toDate(ts) + INTERVAL 30 DAY      -- age rows out (not on 18.16)
--   req_headers Map(String, String) MATERIALIZED
--       mapFromArrays(req_header_names, req_header_values)   -- releases with Map and mapFromArrays
-- A header's value: resp_header_values[indexOf(resp_header_names, 'content-type')]
--
-- A table created by an earlier release lacks the log-phase columns. With
-- create_table: true the logger adds them (and your clickhouse.ingest.columns)
-- itself; otherwise run, once (18.16 has no ADD COLUMN IF NOT EXISTS):
--   ALTER TABLE `default`.`edge_access_log`
--     ADD COLUMN source String DEFAULT 'post_resp', ADD COLUMN service_id String,
--     ADD COLUMN upstream_addr String, ADD COLUMN upstream_latency_ms UInt32,
--     ADD COLUMN apisix_latency_ms UInt32, ADD COLUMN bytes_sent UInt64,
--     ADD COLUMN request_length UInt64, ADD COLUMN rl_status String,
--     ADD COLUMN rl_limit Int64 DEFAULT -1, ADD COLUMN rl_remaining Int64 DEFAULT -1,
--     ADD COLUMN retry_after Int64 DEFAULT -1;
-- and one ADD COLUMN per custom column (clickhouse.ingest.columns), e.g.
--   ALTER TABLE `default`.`edge_access_log` ADD COLUMN region String;
--
-- Keep client_ip a String and the header columns Array(String): the logger
-- sends strings and string arrays.

CREATE TABLE IF NOT EXISTS `default`.`edge_access_log` (
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
