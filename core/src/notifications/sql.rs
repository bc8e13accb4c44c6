//! The notification store on sqlx's `Any` driver: one set of queries and one migrations folder
//! (`migrations/`) for SQLite and PostgreSQL, using only portable types (see the migration).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::{Cursor, NewNotification, Notification, NotificationStore, Page, StoreFailure};
use crate::config::DatabaseSettings;

/// The migrations in `migrations/`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

const COLUMNS: &str = "id, user_id, type, content, created_at, read_at";

fn failure(error: sqlx::Error) -> StoreFailure {
    StoreFailure {
        refused_the_data: database_refused_the_data(&error),
        message: error.to_string(),
    }
}

/// Whether the database answered and refused the data (SQLSTATE class 22, data exception, such
/// as a NUL byte in text or an invalid encoding; class 23, integrity constraint violation), which
/// no retry can change, as opposed to being unreachable or overloaded.
fn database_refused_the_data(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else {
        return false;
    };
    database
        .code()
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

/// Why the database could not be opened or migrated (startup and `realtime migrate`).
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("configuration key `database.url`: {0}")]
    Connect(String),
    #[error("migrations: {0}")]
    Migrate(String),
}

/// Opens the pool. An in-memory SQLite database exists once per connection, so it gets exactly
/// one (see the shared notes).
pub async fn connect(settings: &DatabaseSettings) -> Result<AnyPool, DatabaseError> {
    sqlx::any::install_default_drivers();
    let options = AnyConnectOptions::from_str(&settings.url)
        .map_err(|error| DatabaseError::Connect(error.to_string()))?;
    let in_memory = settings.url.starts_with("sqlite:") && settings.url.contains(":memory:");
    let max_connections = if in_memory {
        1
    } else {
        settings.max_connections
    };
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        // An in-memory database must never be closed for idleness: it would vanish.
        .idle_timeout(if in_memory {
            None
        } else {
            Some(Duration::from_secs(600))
        })
        .max_lifetime(if in_memory {
            None
        } else {
            Some(Duration::from_secs(1800))
        })
        .connect_with(options)
        .await
        .map_err(|error| DatabaseError::Connect(error.to_string()))
}

/// Applies pending migrations; returns how many were applied. Nodes sharing one SQLite file
/// take turns (see [`SqliteMigrationLock`]); PostgreSQL's migrations lock by themselves.
pub async fn migrate(pool: &AnyPool) -> Result<usize, DatabaseError> {
    let database_url = pool.connect_options().database_url.to_string();
    let _turn = SqliteMigrationLock::acquire(&database_url).await?;
    let mut connection = pool
        .acquire()
        .await
        .map_err(|error| DatabaseError::Migrate(error.to_string()))?;
    let applied_before = applied(&mut connection).await;
    // On the held connection: an in-memory SQLite pool has only this one.
    MIGRATOR
        .run(&mut *connection)
        .await
        .map_err(|error| DatabaseError::Migrate(error.to_string()))?;
    let applied_after = applied(&mut connection).await;
    Ok(applied_after.saturating_sub(applied_before))
}

/// An exclusive `flock` on `<database file>.migrate-lock`, held while one process migrates a
/// SQLite file. sqlx's migrator takes no lock on SQLite (it does on PostgreSQL), so several
/// nodes started at once on one machine with the default database would each see no migration
/// applied and all but one fail with "table notifications already exists". Released when
/// dropped (the file is closed), also when the process dies.
struct SqliteMigrationLock {
    _file: std::fs::File,
}

impl SqliteMigrationLock {
    /// `None` for anything but a SQLite file (PostgreSQL, in-memory SQLite).
    async fn acquire(url: &str) -> Result<Option<Self>, DatabaseError> {
        let Some(path) = sqlite_file(url) else {
            return Ok(None);
        };
        let lock_path = format!("{}.migrate-lock", path.display());
        let failed = |error: std::io::Error| {
            DatabaseError::Migrate(format!("cannot lock {lock_path} for migrating: {error}"))
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(failed)?;
        // flock blocks until the process ahead of us is done: off the async workers.
        let locked = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this closure owns for the duration of the call.
            let status = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if status == 0 {
                Ok(file)
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
        .await
        .map_err(|error| DatabaseError::Migrate(error.to_string()))?
        .map_err(failed)?;
        Ok(Some(SqliteMigrationLock { _file: locked }))
    }
}

/// The file of a `sqlite:` URL (`sqlite://realtime.db?mode=rwc`, `sqlite:data/x.db`); `None`
/// for other databases and in-memory SQLite.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let (file, query) = rest.split_once('?').unwrap_or((rest, ""));
    let file = file.strip_prefix("//").unwrap_or(file);
    let in_memory = file.is_empty() || file.contains(":memory:") || query.contains("mode=memory");
    (!in_memory).then(|| std::path::PathBuf::from(file))
}

async fn applied(connection: &mut sqlx::pool::PoolConnection<sqlx::Any>) -> usize {
    sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE")
        .fetch_one(&mut **connection)
        .await
        .ok()
        .and_then(|row| row.try_get::<i64, _>(0).ok())
        .unwrap_or(0) as usize
}

fn notification_from(row: &AnyRow) -> Result<Notification, StoreFailure> {
    Ok(Notification {
        id: row.try_get("id").map_err(failure)?,
        user_id: row.try_get("user_id").map_err(failure)?,
        kind: row.try_get("type").map_err(failure)?,
        content: row.try_get("content").map_err(failure)?,
        created_at: row.try_get("created_at").map_err(failure)?,
        read_at: row.try_get("read_at").map_err(failure)?,
    })
}

/// Notifications in SQLite or PostgreSQL.
pub struct SqlNotificationStore {
    pool: AnyPool,
}

impl SqlNotificationStore {
    pub fn new(pool: AnyPool) -> SqlNotificationStore {
        SqlNotificationStore { pool }
    }

    async fn fetch(&self, user_id: &str, id: &str) -> Result<Option<Notification>, StoreFailure> {
        let query = format!("SELECT {COLUMNS} FROM notifications WHERE id = $1 AND user_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(query))
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(failure)?;
        row.as_ref().map(notification_from).transpose()
    }
}

#[async_trait]
impl NotificationStore for SqlNotificationStore {
    async fn ping(&self) -> Result<(), StoreFailure> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(failure)
    }

    async fn insert(&self, new: &NewNotification) -> Result<(Notification, bool), StoreFailure> {
        let inserted = sqlx::query(
            "INSERT INTO notifications (id, user_id, type, content, created_at, read_at) \
             VALUES ($1, $2, $3, $4, $5, NULL) ON CONFLICT (user_id, id) DO NOTHING",
        )
        .bind(&new.id)
        .bind(&new.user_id)
        .bind(&new.kind)
        .bind(&new.content)
        .bind(new.created_at)
        .execute(&self.pool)
        .await
        .map_err(failure)?;
        let query = format!("SELECT {COLUMNS} FROM notifications WHERE id = $1 AND user_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(query))
            .bind(&new.id)
            .bind(&new.user_id)
            .fetch_one(&self.pool)
            .await
            .map_err(failure)?;
        Ok((notification_from(&row)?, inserted.rows_affected() == 1))
    }

    async fn list(
        &self,
        user_id: &str,
        first: u32,
        after: Option<&Cursor>,
        unread_only: bool,
    ) -> Result<Page, StoreFailure> {
        let unread = if unread_only {
            " AND read_at IS NULL"
        } else {
            ""
        };
        let after_clause = if after.is_some() {
            " AND (created_at < $2 OR (created_at = $2 AND id < $3))"
        } else {
            ""
        };
        let limit_parameter = if after.is_some() { "$4" } else { "$2" };
        let query = format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = $1{unread}{after_clause} \
             ORDER BY created_at DESC, id DESC LIMIT {limit_parameter}"
        );
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(query)).bind(user_id);
        if let Some(cursor) = after {
            statement = statement.bind(cursor.created_at).bind(cursor.id.clone());
        }
        // One extra row tells whether another page follows.
        let rows = statement
            .bind(i64::from(first) + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(failure)?;
        let mut items = rows
            .iter()
            .map(notification_from)
            .collect::<Result<Vec<_>, _>>()?;
        let has_next_page = items.len() > first as usize;
        items.truncate(first as usize);
        Ok(Page {
            items,
            has_next_page,
        })
    }

    async fn unread_count(&self, user_id: &str) -> Result<u64, StoreFailure> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(failure)?;
        Ok(row.try_get::<i64, _>(0).map_err(failure)?.max(0) as u64)
    }

    async fn mark_read(
        &self,
        user_id: &str,
        id: &str,
        at: i64,
    ) -> Result<Option<Notification>, StoreFailure> {
        sqlx::query("UPDATE notifications SET read_at = $1 WHERE id = $2 AND user_id = $3 AND read_at IS NULL")
            .bind(at)
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(failure)?;
        self.fetch(user_id, id).await
    }

    async fn mark_all_read(&self, user_id: &str, at: i64) -> Result<u64, StoreFailure> {
        let done = sqlx::query(
            "UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL",
        )
        .bind(at)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(failure)?;
        Ok(done.rows_affected())
    }

    async fn delete(&self, user_id: &str, id: &str) -> Result<bool, StoreFailure> {
        let done = sqlx::query("DELETE FROM notifications WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(failure)?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn only_sqlite_files_take_the_migration_lock() {
        let file = |url: &str| sqlite_file(url).map(|path| path.display().to_string());
        assert_eq!(
            file("sqlite://realtime.db?mode=rwc").as_deref(),
            Some("realtime.db")
        );
        assert_eq!(file("sqlite:data/x.db").as_deref(), Some("data/x.db"));
        assert_eq!(
            file("sqlite:///var/lib/rt.db").as_deref(),
            Some("/var/lib/rt.db")
        );
        assert_eq!(file("sqlite::memory:"), None);
        assert_eq!(file("sqlite://shared?mode=memory"), None);
        assert_eq!(file("postgres://postgres@127.0.0.1/test"), None);
    }

    /// Six nodes started at once on one SQLite file: every migration run succeeds (without the
    /// lock, all but one failed with "table notifications already exists" or "database is
    /// locked"), and the schema is there once.
    #[tokio::test]
    async fn concurrent_starts_on_one_sqlite_file_all_migrate() {
        let directory =
            std::env::temp_dir().join(format!("realtime-migrate-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&directory).unwrap();
        let mut settings = Settings::defaults().database;
        settings.url = format!("sqlite://{}/shared.db?mode=rwc", directory.display());
        let start = || async {
            let pool = connect(&settings).await?;
            migrate(&pool).await
        };
        // Concurrent on one task (sqlx's migrator futures cannot be spawned), interleaved at
        // every await as separate processes would be.
        let outcomes = futures_util::future::join_all((0..6).map(|_| start())).await;
        let applied: Vec<usize> = outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every concurrent start migrates"))
            .collect();
        let _ = std::fs::remove_dir_all(&directory);
        assert_eq!(
            applied.iter().filter(|count| **count > 0).count(),
            1,
            "one run applies the migrations, the others find them applied: {applied:?}"
        );
    }
}
