//! The archive on S3: create-only `PutObject` (`If-None-Match: *`), SSE on
//! every object, listing by prefix with pagination and hour-partition filtering.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use time::OffsetDateTime;

use super::{cause, Clients};
use crate::config::{AwsConfig, Sse};
use crate::hour_in_range;
use crate::ports::{Archive, ArchiveError, Cause};

/// One bucket.
#[derive(Debug, Clone)]
pub struct S3Archive {
    client: aws_sdk_s3::Client,
    bucket: String,
    sse: Sse,
    kms_key_id: Option<String>,
}

impl S3Archive {
    /// The archive in `config.bucket`.
    pub fn new(clients: &Clients, config: &AwsConfig) -> Self {
        Self {
            client: clients.s3.clone(),
            bucket: config.bucket.clone(),
            sse: config.sse,
            kms_key_id: config.kms_key_id.clone(),
        }
    }
}

impl S3Archive {
    /// `GetObject`, of `(offset, length)` only when given (a `Range` header).
    async fn get_object(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Vec<u8>, ArchiveError> {
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range.map(|(o, l)| format!("bytes={o}-{}", o + l - 1)));
        match request.send().await {
            Ok(out) => out
                .body
                .collect()
                .await
                .map(|b| b.into_bytes().to_vec())
                .map_err(|e| ArchiveError::Unavailable(Cause::of(e))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                Err(ArchiveError::NotFound(key.to_owned()))
            }
            // 416: the range starts past the end.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => Err(
                ArchiveError::NotFound(format!("{key} from byte {:?}", range.map(|r| r.0))),
            ),
            Err(e) => Err(ArchiveError::Unavailable(cause(e))),
        }
    }
}

#[async_trait]
impl Archive for S3Archive {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .content_type("application/json")
            .body(ByteStream::from(bytes.to_vec()));
        req = match self.sse {
            Sse::Kms => req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .set_ssekms_key_id(self.kms_key_id.clone()),
            Sse::Aes256 => req.server_side_encryption(ServerSideEncryption::Aes256),
        };
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                // 412: the key exists; 409: a concurrent conditional put of the same key won.
                if matches!(status, Some(412) | Some(409)) {
                    Err(ArchiveError::AlreadyExists(key.to_owned()))
                } else {
                    Err(ArchiveError::Unavailable(cause(e)))
                }
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        self.get_object(key, None).await
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, ArchiveError> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let missing = || ArchiveError::NotFound(format!("{key} bytes {offset}+{length}"));
        if offset.checked_add(length).is_none() {
            return Err(missing());
        }
        let bytes = self.get_object(key, Some((offset, length))).await?;
        // S3 answers a range that runs past the end with what there is.
        if bytes.len() as u64 == length {
            Ok(bytes)
        } else {
            Err(missing())
        }
    }

    async fn list(
        &self,
        prefix: &str,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Vec<String>, ArchiveError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| ArchiveError::Unavailable(cause(e)))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned))
                    .filter(|k| hour_in_range(k, from, to)),
            );
        }
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::SdkError;
    use aws_sdk_s3::operation::get_object::GetObjectError;

    use super::*;

    /// An S3 that refuses connections: the archive's error says why in its
    /// words (not only the SDK's "dispatch failure") and keeps the SDK's
    /// error as its source.
    #[tokio::test]
    async fn a_failed_call_keeps_its_cause() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let config = AwsConfig {
            endpoint_url: Some(format!("http://127.0.0.1:{port}")),
            operation_timeout_ms: 5_000,
            ..AwsConfig::default()
        };
        let archive = S3Archive::new(&Clients::new(&config).await, &config);
        let err = archive.get("raw/x").await.unwrap_err();
        let ArchiveError::Unavailable(cause) = &err else {
            panic!("{err:?}");
        };
        let text = cause.to_string();
        assert!(
            text.contains(": "),
            "the chain beneath the SDK's words: {text}"
        );
        let sdk = err
            .source()
            .and_then(Error::source)
            .and_then(|e| e.downcast_ref::<SdkError<GetObjectError, HttpResponse>>());
        assert!(sdk.is_some(), "{err:?}");
    }
}
