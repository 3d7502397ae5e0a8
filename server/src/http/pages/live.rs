//! Live pages: one Server-Sent Events stream per open page. The stream wakes when this server
//! stores something for the run (and every few seconds, for writes that reached another server
//! sharing the database), and sends at most one `update` a second; the page's script then
//! redraws its charts or its table without a reload.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use redline_core::RunId;
use redline_core::catalogue;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::error::PageError;
use super::session::Viewer;
use super::view::{RunView, url_encode};
use crate::http::run_id;
use crate::state::AppState;
use crate::store::{RunFilter, RunSort, StoreError, StoreResult};
use crate::telemetry::{OpenStream, StreamKind};

/// The fewest seconds between two updates of a page.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How often a page checks the store even when this server saw no write.
const POLL: Duration = Duration::from_secs(3);

/// What a run page shows that can change.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct RunSnapshot {
    last_step: Option<i64>,
    /// The facts' last loss and margin, as the page formats them.
    loss: String,
    margin: String,
    status: &'static str,
    signals: usize,
    acked: usize,
    /// Rule events, so that an alert that sends no signal still refreshes the page's table.
    events: i64,
}

/// What the runs page shows that can change: the most recently written run.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct RunsSnapshot {
    latest: Option<(String, String, Option<i64>, &'static str)>,
}

struct Watch {
    /// Counts the page's stream as open while it lives.
    _open: OpenStream,
    state: AppState,
    run: Option<RunId>,
    changes: tokio::sync::broadcast::Receiver<RunId>,
    last: Option<String>,
    last_sent: Option<Instant>,
}

impl Watch {
    fn new(state: AppState, run: Option<RunId>) -> Self {
        let changes = state.changes.subscribe();
        Self {
            _open: state.telemetry.stream_opened(StreamKind::Pages),
            state,
            run,
            changes,
            last: None,
            last_sent: None,
        }
    }

    /// Waits for a write that concerns this page, the poll interval, or shutdown (false).
    async fn wake(&mut self) -> bool {
        let poll = tokio::time::sleep(POLL);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                () = self.state.shutdown.cancelled() => return false,
                () = &mut poll => return true,
                changed = self.changes.recv() => match changed {
                    Ok(id) if self.run.as_ref().is_none_or(|r| *r == id) => return true,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return true,
                    Err(RecvError::Closed) => return false,
                },
            }
        }
    }

    async fn snapshot(&self) -> StoreResult<String> {
        let store = &self.state.store;
        let json = if let Some(id) = &self.run {
            let (v, events) = futures::try_join!(
                RunView::load(store.as_ref(), id),
                store.rule_event_count(id)
            )?;
            serde_json::to_string(&RunSnapshot {
                last_step: v.run.last_step,
                loss: v.last(catalogue::LOSS.name),
                margin: v.last(catalogue::REWARD_MARGIN.name),
                status: v.run.status.as_str(),
                signals: v.signals.len(),
                acked: v.signals.iter().filter(|s| s.acked_at.is_some()).count(),
                events,
            })
        } else {
            let filter = RunFilter {
                sort: RunSort::Updated,
                limit: 1,
                ..RunFilter::default()
            };
            let latest = store.list_runs(&filter).await?.into_iter().next();
            serde_json::to_string(&RunsSnapshot {
                latest: latest.map(|r| {
                    (
                        r.id.to_string(),
                        r.updated_at.to_rfc3339(),
                        r.last_step,
                        r.status.as_str(),
                    )
                }),
            })
        };
        Ok(json.unwrap_or_default())
    }

    /// The next update to send; None ends the stream.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if self.last.is_some() && !self.wake().await {
                return None;
            }
            if let Some(sent) = self.last_sent {
                tokio::select! {
                    () = self.state.shutdown.cancelled() => return None,
                    () = tokio::time::sleep_until(sent + MIN_INTERVAL) => {}
                }
            }
            let snapshot = match self.snapshot().await {
                Ok(s) => s,
                // The run was deleted: its page has nothing more to show.
                Err(StoreError::RunNotFound(_)) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "live page update failed; ending the stream");
                    return None;
                }
            };
            if self.last.as_ref() != Some(&snapshot) {
                self.last = Some(snapshot.clone());
                self.last_sent = Some(Instant::now());
                return Some((Ok(Event::default().event("update").data(snapshot)), self));
            }
        }
    }
}

fn stream(watch: Watch) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(futures::stream::unfold(watch, Watch::next)).keep_alive(KeepAlive::default())
}

pub async fn run_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    Viewer::of(&state, &headers, &format!("/runs/{}", url_encode(&id))).await?;
    let id = run_id(id)?;
    state.store.run(&id).await?;
    Ok(stream(Watch::new(state, Some(id))))
}

pub async fn runs_events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    Viewer::of(&state, &headers, "/").await?;
    Ok(stream(Watch::new(state, None)))
}
