//! The part of the store that rules and alerts use: rule sets (versioned, pinned per run), what
//! rules did (rule events), webhooks, and the webhook outbox with its delivery log. Both stores
//! implement it with the same SQL (`alerts_sql.rs`); only the outbox claim differs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redline_core::rules::Firing;
use redline_core::wire::{DeliveryAttempt, NewWebhook, RuleEvent, Webhook, WebhookFormat};
use redline_core::{RuleSetName, RunId, WebhookName};
use secrecy::SecretString;

use super::StoreResult;

/// One stored version of a rule set.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredRuleSet {
    pub name: String,
    pub version: i32,
    pub source: String,
    pub created_at: DateTime<Utc>,
}

/// What a run's rules need to pick up where they left off.
#[derive(Debug, Clone)]
pub struct RunRules {
    pub sets: Vec<StoredRuleSet>,
    /// The last step the rules evaluated, as stored by the ingest that evaluated it.
    pub rules_step: Option<i64>,
    /// The run's last stored step.
    pub last_step: Option<i64>,
}

/// What the rules concluded about one batch, written in the batch's ingest transaction; `None`
/// when the run has no rules: nothing is checked or written.
pub type RuleWrites<'a> = Option<Evaluated<'a>>;

/// What the rules concluded about a batch, as the store's ingest receives it: possibly still
/// being computed (a large batch is evaluated on the blocking pool while the store writes its
/// points), so the store asks for it only where it writes the rules' part.
#[async_trait]
pub trait PendingRules: Send + Sync {
    async fn writes(&self) -> StoreResult<RuleWrites<'_>>;
}

/// Already computed.
#[async_trait]
impl PendingRules for RuleWrites<'_> {
    async fn writes(&self) -> StoreResult<RuleWrites<'_>> {
        Ok(*self)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Evaluated<'a> {
    /// The rules step this evaluation started from; the write is refused with
    /// [`super::StoreError::RulesMoved`] when the stored one differs (another server moved on).
    pub from_step: Option<i64>,
    pub to_step: Option<i64>,
    pub firings: &'a [Firing],
}

/// A webhook with what delivery needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookTarget {
    pub name: String,
    pub url: String,
    #[sqlx(try_from = "String")]
    pub format: WebhookFormat,
    #[sqlx(try_from = "String")]
    pub secret: SecretString,
}

/// A message claimed for one delivery attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub outbox_id: i64,
    pub message_id: String,
    /// Attempts made before this one.
    pub attempts: i32,
    #[sqlx(flatten)]
    pub webhook: WebhookTarget,
    /// The alert; `None` for a test delivery.
    #[sqlx(skip)]
    pub event: Option<AlertEvent>,
}

/// A rule event with the run it belongs to, as webhook payloads show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertEvent {
    #[sqlx(flatten)]
    pub event: RuleEvent,
    pub run_name: String,
    pub project: String,
}

/// What becomes of a message after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NextStep {
    Delivered,
    RetryAt(DateTime<Utc>),
    GiveUp,
}

impl NextStep {
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::RetryAt(_) => "retry",
            Self::GiveUp => "failed",
        }
    }
}

/// How one attempt ended, and what happens to the message next.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: DateTime<Utc>,
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
    pub next: NextStep,
}

#[async_trait]
pub trait AlertStore {
    /// Stores `source` as the next version of `name`; the same source as the newest version
    /// stores nothing and returns that version.
    async fn put_rule_set(&self, name: &RuleSetName, source: &str) -> StoreResult<StoredRuleSet>;
    /// Stores version 1 of `name` unless the name exists.
    async fn ensure_rule_set(&self, name: &RuleSetName, source: &str) -> StoreResult<()>;
    /// The newest version of every rule set, by name.
    async fn rule_sets(&self) -> StoreResult<Vec<StoredRuleSet>>;
    /// A version of `name`, the newest when `version` is `None`.
    async fn rule_set(
        &self,
        name: &RuleSetName,
        version: Option<i32>,
    ) -> StoreResult<StoredRuleSet>;
    /// The rule sets pinned to a run, in order, and where its rules stopped.
    async fn run_rules(&self, id: &RunId) -> StoreResult<RunRules>;
    /// What the run's rules did, oldest first.
    async fn rule_events(&self, id: &RunId) -> StoreResult<Vec<RuleEvent>>;
    /// How many events the run's rules made.
    async fn rule_event_count(&self, id: &RunId) -> StoreResult<i64>;
    /// The newest `limit` events of the run's rules, newest first.
    async fn newest_rule_events(&self, id: &RunId, limit: u32) -> StoreResult<Vec<RuleEvent>>;

    /// Creates a webhook; `secret` is the one to sign with (given or generated).
    async fn create_webhook(&self, w: &NewWebhook, secret: &str) -> StoreResult<Webhook>;
    async fn webhooks(&self) -> StoreResult<Vec<Webhook>>;
    /// Deletes the webhook with its undelivered messages and delivery log.
    async fn delete_webhook(&self, name: &WebhookName) -> StoreResult<()>;
    /// The newest `limit` attempts to deliver to `name`, newest first.
    async fn deliveries(&self, name: &WebhookName, limit: u32)
    -> StoreResult<Vec<DeliveryAttempt>>;

    /// Claims up to `limit` pending messages due at `now`, leasing each until `lease_until`: a
    /// server that dies mid-delivery leaves them to be claimed again after the lease.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Due>>;
    /// Logs an attempt and moves its message on (delivered, retry later, or given up).
    async fn record_attempt(&self, due: &Due, attempt: &AttemptRecord) -> StoreResult<()>;
    /// When the next pending message is due, if any is.
    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>>;
    /// Queues a test message for `name`, leased to the caller, who delivers it at once.
    async fn enqueue_test(
        &self,
        name: &WebhookName,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Due>;
}
