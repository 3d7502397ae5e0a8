//! How the one body of SQL in [`super::sql`] runs on either driver. Statements are written once,
//! with `$n` parameters, which SQLite and PostgreSQL both read; what differs between the
//! backends is the short list in [`Dialect`], implemented in `sqlite.rs` and `postgres.rs`.
//!
//! Why not sqlx's `Any` driver: it decodes only integers, floats, text and bytes, so timestamps
//! (TEXT in SQLite, `timestamptz` in PostgreSQL), JSON and booleans would need hand conversions
//! in every row type. Why not plain generic code over `sqlx::Database`: every function would
//! carry a dozen `T: Encode<DB> + Type<DB>` and `FromRow<DB::Row>` bounds, which Rust does not
//! imply from a trait. Here those bounds are written once, on the blanket impl of [`Exec`];
//! arguments travel as [`Arg`] values and rows decode through [`Decode`], which every row type
//! satisfies for both drivers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::postgres::{PgQueryResult, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteQueryResult, SqliteRow};
use sqlx::types::Json;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use redline_core::RunId;

use super::chunk::IngestPlan;

/// A statement argument. Only the types the shared SQL binds; the bulk statements that bind
/// arrays are the dialects' own.
#[derive(Debug, Clone)]
pub enum Arg<'a> {
    I64(Option<i64>),
    I32(Option<i32>),
    F64(Option<f64>),
    /// SQLite stores it as 0 or 1; `NOT $n` reads the same in both.
    Bool(bool),
    Str(Option<Cow<'a, str>>),
    Time(Option<DateTime<Utc>>),
    Json(Option<Json<serde_json::Value>>),
}

macro_rules! arg_from {
    ($($variant:ident($t:ty)),*) => {$(
        impl<'a> From<$t> for Arg<'a> {
            fn from(v: $t) -> Self {
                Self::$variant(Some(v.into()))
            }
        }
        impl<'a> From<Option<$t>> for Arg<'a> {
            fn from(v: Option<$t>) -> Self {
                Self::$variant(v.map(Into::into))
            }
        }
    )*};
}
arg_from!(
    I64(i64),
    I32(i32),
    F64(f64),
    Str(&'a str),
    Str(&'a String),
    Str(String),
    Time(DateTime<Utc>)
);

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// A JSON argument (`jsonb` in PostgreSQL, text in SQLite).
pub fn json(v: &impl serde::Serialize) -> Arg<'static> {
    Arg::Json(Some(Json(
        serde_json::to_value(v).expect("plain data serialises"),
    )))
}

/// The arguments of a statement, in `$n` order.
pub type Args<'a> = Vec<Arg<'a>>;

/// [`Args`] from values.
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$($crate::store::exec::Arg::from($a)),*] };
}
pub(super) use args;

/// A row type both drivers decode (the derived `FromRow` of a struct, or a tuple).
pub trait Decode:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin> Decode for T {}

/// A driver's row, decoded into any [`Decode`] type.
pub trait DecodeRow: sqlx::Row {
    fn decode<R: Decode>(&self) -> sqlx::Result<R>;
}
impl DecodeRow for SqliteRow {
    fn decode<R: Decode>(&self) -> sqlx::Result<R> {
        <R as FromRow<SqliteRow>>::from_row(self)
    }
}
impl DecodeRow for PgRow {
    fn decode<R: Decode>(&self) -> sqlx::Result<R> {
        <R as FromRow<PgRow>>::from_row(self)
    }
}

/// A driver's statement result.
pub trait Affected {
    fn affected(&self) -> u64;
}
impl Affected for SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}
impl Affected for PgQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// Runs a statement with [`Arg`]s on a connection (a transaction derefs to one); implemented
/// once for every driver that can bind and decode what the shared SQL uses.
pub trait Exec: Database {
    /// The statement with its arguments bound.
    fn query<'q>(sql: &'q str, args: Args<'q>) -> Query<'q, Self, Self::Arguments<'q>>;

    /// Rows as the statement yields them, for reads (see [`Self::optional`] for why not writes).
    fn fetch<'c, R: Decode + 'c>(
        c: &'c mut Self::Connection,
        sql: &'c str,
        args: Args<'c>,
    ) -> BoxStream<'c, sqlx::Result<R>>;

    /// Rows changed.
    fn execute<'c>(
        c: &'c mut Self::Connection,
        sql: &'c str,
        args: Args<'c>,
    ) -> BoxFuture<'c, sqlx::Result<u64>>;

    fn all<'c, R: Decode + 'c>(
        c: &'c mut Self::Connection,
        sql: &'c str,
        args: Args<'c>,
    ) -> impl Future<Output = sqlx::Result<Vec<R>>> + Send + 'c {
        Self::fetch(c, sql, args).try_collect()
    }

    /// The first row, if any, once the statement is done. Not the first row of [`Self::fetch`]:
    /// SQLite commits a statement of its own (an `UPDATE … RETURNING` outside a transaction) only
    /// when it runs to completion, and that stream hands over the row before the worker thread
    /// gets there. A reader elsewhere could then miss a write already reported done, and a CLI
    /// that exits at once could lose it. sqlx's `fetch_optional` completes the statement first.
    fn optional<'c, R: Decode + 'c>(
        c: &'c mut Self::Connection,
        sql: &'c str,
        args: Args<'c>,
    ) -> BoxFuture<'c, sqlx::Result<Option<R>>>;

    fn one<'c, R: Decode + 'c>(
        c: &'c mut Self::Connection,
        sql: &'c str,
        args: Args<'c>,
    ) -> impl Future<Output = sqlx::Result<R>> + Send + 'c {
        async move {
            Self::optional(c, sql, args)
                .await?
                .ok_or(sqlx::Error::RowNotFound)
        }
    }
}

impl<D> Exec for D
where
    D: Database,
    D::Row: DecodeRow,
    D::QueryResult: Affected,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'q> Option<i64>: Encode<'q, D> + Type<D>,
    for<'q> Option<i32>: Encode<'q, D> + Type<D>,
    for<'q> Option<f64>: Encode<'q, D> + Type<D>,
    for<'q> bool: Encode<'q, D> + Type<D>,
    for<'q> Option<Cow<'q, str>>: Encode<'q, D> + Type<D>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, D> + Type<D>,
    for<'q> Option<Json<serde_json::Value>>: Encode<'q, D> + Type<D>,
{
    fn query<'q>(sql: &'q str, args: Args<'q>) -> Query<'q, D, D::Arguments<'q>> {
        let mut q = sqlx::query(sql);
        for a in args {
            q = match a {
                Arg::I64(v) => q.bind(v),
                Arg::I32(v) => q.bind(v),
                Arg::F64(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Str(v) => q.bind(v),
                Arg::Time(v) => q.bind(v),
                Arg::Json(v) => q.bind(v),
            };
        }
        q
    }

    fn fetch<'c, R: Decode + 'c>(
        c: &'c mut D::Connection,
        sql: &'c str,
        args: Args<'c>,
    ) -> BoxStream<'c, sqlx::Result<R>> {
        Self::query(sql, args)
            .fetch(c)
            .map(|row| row?.decode())
            .boxed()
    }

    fn optional<'c, R: Decode + 'c>(
        c: &'c mut D::Connection,
        sql: &'c str,
        args: Args<'c>,
    ) -> BoxFuture<'c, sqlx::Result<Option<R>>> {
        Box::pin(async move {
            Self::query(sql, args)
                .fetch_optional(c)
                .await?
                .map(|row| row.decode())
                .transpose()
        })
    }

    fn execute<'c>(
        c: &'c mut D::Connection,
        sql: &'c str,
        args: Args<'c>,
    ) -> BoxFuture<'c, sqlx::Result<u64>> {
        Box::pin(async move { Ok(Self::query(sql, args).execute(c).await?.affected()) })
    }
}

/// A chunk of a run's series: (metric id, chunk number).
pub type ChunkKey = (i32, i64);
/// Stored chunk data by key.
pub type ChunkKeys = HashMap<ChunkKey, Vec<u8>>;

/// What differs between the backends, and nothing else.
pub trait Dialect: Exec + std::fmt::Debug + Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    const BACKEND: &'static str;
    /// Ends a `SELECT` of rows the transaction goes on to change.
    const LOCK: &'static str;
    /// True when the run's `tags` hold `$5`.
    const HAS_TAG: &'static str;
    /// Claims due outbox rows: binds `$1` now, `$2` lease end, `$3` limit; returns their ids.
    const CLAIM: &'static str;

    /// A `SELECT` of the elements of the JSON array of text bound as `param`.
    fn elements(param: &str) -> String;

    /// The stored chunks among `keys` of the run `pk`, by (metric id, chunk). A dialect's own:
    /// the one statement both could share (`metric_id IN (elements) AND chunk BETWEEN`, filtered
    /// afterwards, as SQLite's is) is planned by PostgreSQL as a hash join over a scan of every
    /// index entry of the run (the chunk is the key's last column), a cost that grows with the
    /// run, where its `UNNEST` join looks up each key.
    fn read_chunks<'c>(
        c: &'c mut Self::Connection,
        pk: i64,
        keys: &'c [ChunkKey],
    ) -> impl Future<Output = sqlx::Result<ChunkKeys>> + Send + 'c;

    /// Writes a batch's chunk rows and adds its counts to the series' summary rows.
    fn write_plan<'c>(
        c: &'c mut Self::Connection,
        pk: i64,
        plan: &'c IngestPlan,
    ) -> impl Future<Output = sqlx::Result<()>> + Send + 'c;

    /// Tells other servers sharing the database, when the transaction commits, that `run` has a
    /// new signal.
    fn notify<'c>(
        c: &'c mut Self::Connection,
        run: &'c RunId,
    ) -> impl Future<Output = sqlx::Result<()>> + Send + 'c;
}
