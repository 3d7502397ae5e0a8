//! Signals to the trainer: create, list, stream (SSE) and acknowledge.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use redline_core::RunId;
use redline_core::wire::{AckSignal, FieldError, NewSignal, Signal, SignalList};
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Query, flag};
use super::run_id;
use crate::error::{AppError, Result};
use crate::state::AppState;
use crate::store::Store;
use crate::telemetry::{OpenStream, StreamKind};
use serde::Deserialize;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_signal, list_signals))
        .routes(routes!(stream_signals))
        .routes(routes!(ack_signal))
}

/// Queues a signal for the run's trainer; open streams deliver it at once.
#[utoipa::path(post, path = "/runs/{run_id}/signals", tag = "signals",
    params(("run_id" = String, Path)),
    request_body = NewSignal,
    responses(
        (status = 201, body = Signal),
        (status = 400, body = redline_core::wire::ErrorBody),
        (status = 404, body = redline_core::wire::ErrorBody),
        (status = 409, description = "The run is not running", body = redline_core::wire::ErrorBody),
    ))]
async fn create_signal(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NewSignal>,
) -> Result<(StatusCode, Json<Signal>)> {
    let id = run_id(id)?;
    let signal = state.store.create_signal(&id, &req.validate()?).await?;
    state.changed(&id);
    tracing::info!(run = %id, signal = signal.id, kind = signal.kind.as_str(), "signal queued");
    Ok((StatusCode::CREATED, Json(signal)))
}

/// Which of a run's signals to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListSignals {
    /// Only unacknowledged signals (default true).
    #[serde(default, deserialize_with = "flag")]
    pending: Option<bool>,
    /// Only signals with a larger id.
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// Where a signal stream starts.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamAfter {
    /// Same as Last-Event-ID, for clients that cannot set headers.
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// The run's signals, oldest first: pending ones only unless `pending=false`.
#[utoipa::path(get, path = "/runs/{run_id}/signals", tag = "signals",
    params(("run_id" = String, Path), ListSignals),
    responses((status = 200, body = SignalList), (status = 404, body = redline_core::wire::ErrorBody)))]
async fn list_signals(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ListSignals>,
) -> Result<Json<SignalList>> {
    let id = run_id(id)?;
    let (pending, after) = (q.pending.unwrap_or(true), q.after.unwrap_or(0));
    Ok(Json(SignalList {
        signals: state.store.signals(&id, after, pending).await?,
    }))
}

/// Records that the trainer applied the signal at `step`, or, with `refused`, that it could not
/// and why. Repeating the same answer is a no-op; a different one is a conflict.
#[utoipa::path(post, path = "/runs/{run_id}/signals/{signal_id}/ack", tag = "signals",
    params(("run_id" = String, Path), ("signal_id" = i64, Path)),
    request_body = AckSignal,
    responses(
        (status = 200, body = Signal),
        (status = 404, body = redline_core::wire::ErrorBody),
        (status = 409, description = "Already acknowledged at another step", body = redline_core::wire::ErrorBody),
    ))]
async fn ack_signal(
    State(state): State<AppState>,
    Path((id, signal)): Path<(String, String)>,
    JsonBody(req): JsonBody<AckSignal>,
) -> Result<Json<Signal>> {
    let id = run_id(id)?;
    let signal: i64 = signal.parse().map_err(|_| {
        FieldError::new(
            "signal_id",
            format!("must be a whole number, got {signal:?}"),
        )
    })?;
    req.validate()?;
    let acked = state.store.ack_signal(&id, signal, &req).await?;
    state.changed(&id);
    match &req.refused {
        None => tracing::info!(run = %id, signal, step = req.step, "signal applied"),
        Some(why) => {
            tracing::warn!(run = %id, signal, step = req.step, why, "signal refused by the trainer");
        }
    }
    Ok(Json(acked))
}

/// Server-Sent Events: every pending signal of the run as an event `signal` whose id is the
/// signal id, then each new one as it is created. A reconnecting client sends `Last-Event-ID`
/// (or `?after=`) and gets only what came after. The stream ends when the server shuts down.
#[utoipa::path(get, path = "/runs/{run_id}/signals/stream", tag = "signals",
    params(
        ("run_id" = String, Path),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this signal id"),
        StreamAfter,
    ),
    responses(
        (status = 200, description = "text/event-stream of `signal` events carrying Signal JSON", content_type = "text/event-stream", body = String),
        (status = 404, body = redline_core::wire::ErrorBody),
    ))]
async fn stream_signals(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<StreamAfter>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = run_id(id)?;
    let from_header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    FieldError::new("Last-Event-ID", "must be a signal id (a whole number)")
                })
        })
        .transpose()?;
    let after = from_header.or(q.after).unwrap_or(0);
    // Subscribe before the first read, so a signal created in between is not missed.
    let events = state.store.signal_events();
    state.store.run(&id).await?;
    let feed = Feed {
        _open: state.telemetry.stream_opened(StreamKind::Signals),
        store: state.store.clone(),
        run: id,
        events,
        after,
        queue: VecDeque::new(),
        fresh: true,
    };
    let stream = futures::stream::unfold(feed, Feed::next)
        .map(|s| Ok(signal_event(&s)))
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn signal_event(s: &Signal) -> Event {
    Event::default()
        .event("signal")
        .id(s.id.to_string())
        .json_data(s)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

/// The state of one event stream.
struct Feed {
    /// Counts the stream as open until the stream, and with it this, is dropped.
    _open: OpenStream,
    store: Arc<dyn Store>,
    run: RunId,
    events: broadcast::Receiver<RunId>,
    after: i64,
    queue: VecDeque<Signal>,
    fresh: bool,
}

impl Feed {
    async fn next(mut self) -> Option<(Signal, Self)> {
        loop {
            if let Some(s) = self.queue.pop_front() {
                self.after = s.id;
                return Some((s, self));
            }
            if !self.fresh && !self.wait_for_this_run().await {
                return None;
            }
            self.fresh = false;
            match self.store.signals(&self.run, self.after, true).await {
                Ok(found) => self.queue.extend(found),
                Err(e) => {
                    tracing::error!(run = %self.run, error = %AppError::from(e), "signal stream read failed");
                    return None;
                }
            }
        }
    }

    /// Waits until a signal may exist for this run; false when no more can come.
    async fn wait_for_this_run(&mut self) -> bool {
        loop {
            match self.events.recv().await {
                Ok(run) if run == self.run => return true,
                Ok(_) => {}
                // Missed some wake-ups: re-reading is always safe.
                Err(RecvError::Lagged(_)) => return true,
                Err(RecvError::Closed) => return false,
            }
        }
    }
}
