//! Incomplete S3 multipart uploads a crash left under sandpit's prefix (they cost storage
//! and are invisible to listings): listed with ListMultipartUploads and aborted with
//! AbortMultipartUpload, requests signed with object_store's own SigV4 signer and
//! credentials, as object_store has no call for either.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::HttpRequestBody;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Pages of 1000 uploads listed at most per sweep.
const MAX_PAGES: usize = 100;
/// Longest one request to the bucket may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The S3 bucket snapshots live in, for the calls object_store does not make.
pub(crate) struct Bucket {
    pub store: Arc<AmazonS3>,
    /// `https://endpoint/bucket` (path style, as object_store addresses it).
    pub url: String,
    pub region: String,
    /// Younger incomplete uploads are left alone: another server may be writing them.
    pub max_age: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListResult {
    #[serde(default, rename = "Upload")]
    uploads: Vec<Upload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
    initiated: String,
}

impl Bucket {
    /// Aborts the incomplete uploads under `prefix` older than `max_age` (but those in
    /// `writing`); failures are logged.
    pub async fn abort_abandoned(&self, prefix: &str, writing: &HashSet<String>) {
        match self.abort_old(prefix, writing).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(aborted = n, "aborted abandoned multipart uploads"),
            Err(e) => tracing::warn!(error = %e, "could not sweep incomplete multipart uploads"),
        }
    }

    async fn abort_old(&self, prefix: &str, writing: &HashSet<String>) -> Result<usize, String> {
        let cutoff = OffsetDateTime::now_utc() - self.max_age;
        let mut marker: Option<(String, String)> = None;
        let mut aborted = 0;
        for _ in 0..MAX_PAGES {
            let mut url = reqwest::Url::parse(&self.url).map_err(|e| e.to_string())?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("uploads", "");
                if !prefix.is_empty() {
                    q.append_pair("prefix", prefix);
                }
                if let Some((key, id)) = &marker {
                    q.append_pair("key-marker", key);
                    q.append_pair("upload-id-marker", id);
                }
            }
            let body = self.send(http::Method::GET, url).await?;
            let list: ListResult = quick_xml::de::from_str(&body)
                .map_err(|e| format!("ListMultipartUploads answer: {e}"))?;
            for up in &list.uploads {
                if !up.key.starts_with(prefix) || writing.contains(&up.key) {
                    continue;
                }
                // An upload of unknown age is left alone.
                let old = OffsetDateTime::parse(&up.initiated, &Rfc3339).is_ok_and(|t| t <= cutoff);
                if !old {
                    continue;
                }
                let mut url = reqwest::Url::parse(&format!("{}/{}", self.url, up.key))
                    .map_err(|e| e.to_string())?;
                url.query_pairs_mut().append_pair("uploadId", &up.upload_id);
                self.send(http::Method::DELETE, url).await?;
                tracing::info!(key = %up.key, initiated = %up.initiated, "aborted an abandoned multipart upload");
                aborted += 1;
            }
            match (
                list.is_truncated,
                list.next_key_marker,
                list.next_upload_id_marker,
            ) {
                (true, Some(key), Some(id)) if !key.is_empty() => marker = Some((key, id)),
                _ => break,
            }
        }
        Ok(aborted)
    }

    /// A signed request without a body; the answer's body.
    async fn send(&self, method: http::Method, url: reqwest::Url) -> Result<String, String> {
        let credential = self
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| e.to_string())?;
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(url.as_str())
            .body(HttpRequestBody::empty())
            .map_err(|e| e.to_string())?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut req, None);
        let resp = reqwest::Client::new()
            .request(method.clone(), url.clone())
            .headers(req.headers().clone())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("{method} {}: {e}", url.path()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{method} {}: {status}: {text}", url.path()));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_answers_parse() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/sb/snap-2.tar.zst</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
  <MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/sb/snap-1.tar.zst</Key><UploadId>id1</UploadId>
    <Initiator><ID>x</ID></Initiator><StorageClass>STANDARD</StorageClass>
    <Initiated>2026-12-01T10:00:00.000Z</Initiated></Upload>
  <Upload><Key>p/sb/snap-2.tar.zst</Key><UploadId>id2</UploadId>
    <Initiated>2026-12-01T10:00:01.000Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let list: ListResult = quick_xml::de::from_str(xml).unwrap();
        assert_eq!(list.uploads.len(), 2);
        assert_eq!(list.uploads[1].upload_id, "id2");
        assert!(list.is_truncated);
        assert_eq!(list.next_key_marker.as_deref(), Some("p/sb/snap-2.tar.zst"));
        assert!(OffsetDateTime::parse(&list.uploads[0].initiated, &Rfc3339).is_ok());
        let empty: ListResult = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.uploads.is_empty() && !empty.is_truncated);
    }
}
