-- The raw archive as an Athena table. Partition projection derives the
-- partitions from the key layout raw/source=…/date=YYYY-MM-DD/hour=HH/, so no
-- MSCK REPAIR or crawler is needed and a query scans only its time range.
-- Replace the bucket name and the source list.
CREATE EXTERNAL TABLE IF NOT EXISTS paynotify_raw (
  v            int,
  id           string,
  received_at  string,
  remote_addr  string,
  method       string,
  path         string,
  query        string,
  headers      array<array<string>>,
  body         string,
  body_b64     string,
  body_sha256  string
)
PARTITIONED BY (source string, `date` string, `hour` string)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
LOCATION 's3://YOUR-ARCHIVE-BUCKET/raw/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.source.type' = 'enum',
  'projection.source.values' = 'unionpay',
  'projection.date.type' = 'date',
  'projection.date.format' = 'yyyy-MM-dd',
  'projection.date.range' = '2024-01-01,NOW',
  'projection.date.interval' = '1',
  'projection.date.interval.unit' = 'DAYS',
  'projection.hour.type' = 'integer',
  'projection.hour.range' = '0,23',
  'projection.hour.digits' = '2',
  'storage.location.template' = 's3://YOUR-ARCHIVE-BUCKET/raw/source=${source}/date=${date}/hour=${hour}/'
);

-- Example: notifications of one hour whose body mentions a UnionPay order.
-- SELECT id, received_at, url_decode(regexp_extract(body, 'orderId=([^&]*)', 1)) AS order_id
-- FROM paynotify_raw
-- WHERE source = 'unionpay' AND "date" = '2026-11-25' AND "hour" = '14';
