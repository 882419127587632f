//! Notifications: webhooks on request created, approved, denied, break-glass,
//! grant ended. Each webhook has its own bounded queue and worker task, so a
//! slow or failing receiver never blocks or slows the access workflow; failed
//! deliveries are retried with backoff, then dropped with a log line.

mod http;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::access::{AccessEvent, EventKind, EventSink};

/// How many undelivered events one webhook may hold before new ones are dropped.
const QUEUE: usize = 256;
/// Attempts per event: the first try and four retries (0.5 s, 1 s, 2 s, 4 s).
const ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://…` or `https://…`
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Only these events (e.g. `["request_created", "break_glass"]`); all when empty.
    #[serde(default)]
    pub events: Vec<String>,
    /// CA bundle for https receivers.
    #[serde(default = "default_ca_file")]
    pub ca_file: String,
}

fn default_ca_file() -> String {
    "/etc/ssl/certs/ca-certificates.crt".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"text": "…"}`, what Slack (and Mattermost, Teams' Slack mode) accept.
    #[default]
    Slack,
    /// The whole event as JSON.
    Json,
}

/// The kinds that notify by default; approvals that do not reach the threshold
/// only go to the audit log.
fn notifies(kind: EventKind) -> bool {
    !matches!(kind, EventKind::ApprovalCounted)
}

pub struct Webhook {
    config: WebhookConfig,
    queue: mpsc::Sender<Arc<AccessEvent>>,
}

impl Webhook {
    /// Starts the delivery task; must be called inside the tokio runtime.
    pub fn start(config: WebhookConfig) -> Result<Webhook, String> {
        let target = http::Target::parse(&config.url, &config.ca_file)?;
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(target, config.format, rx));
        Ok(Webhook { config, queue })
    }

    fn wants(&self, kind: EventKind) -> bool {
        if self.config.events.is_empty() {
            notifies(kind)
        } else {
            self.config.events.iter().any(|e| e == kind.as_str())
        }
    }
}

impl EventSink for Webhook {
    fn emit(&self, event: &AccessEvent) {
        if !self.wants(event.kind) {
            return;
        }
        if self.queue.try_send(Arc::new(event.clone())).is_err() {
            tracing::warn!(url = %self.config.url, kind = event.kind.as_str(), "webhook queue full; event dropped");
        }
    }
}

fn body(format: WebhookFormat, event: &AccessEvent) -> Vec<u8> {
    let value = match format {
        WebhookFormat::Slack => {
            serde_json::json!({ "text": format!("[drawbridge] {}", event.summary()) })
        }
        WebhookFormat::Json => {
            serde_json::json!({ "event": event.kind.as_str(), "summary": event.summary(), "detail": event })
        }
    };
    value.to_string().into_bytes()
}

async fn deliver(
    target: http::Target,
    format: WebhookFormat,
    mut rx: mpsc::Receiver<Arc<AccessEvent>>,
) {
    while let Some(event) = rx.recv().await {
        let payload = body(format, &event);
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            match target.post_json(&payload).await {
                Ok(()) => break,
                Err(e) if attempt == ATTEMPTS => {
                    tracing::warn!(url = %target, error = %e, kind = event.kind.as_str(), "webhook delivery failed; giving up");
                }
                Err(e) => {
                    tracing::debug!(url = %target, error = %e, attempt, "webhook delivery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
}
