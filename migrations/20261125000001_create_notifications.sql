-- Notifications, shared by SQLite (the embedded default) and PostgreSQL through sqlx's Any driver.
-- Portable column types only: timestamps are Unix milliseconds (BIGINT), content is JSON text.
CREATE TABLE notifications (
    id         TEXT   NOT NULL PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    type       TEXT   NOT NULL,
    content    TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    read_at    BIGINT
);

-- Newest-first listing of one user's notifications, with (created_at, id) as the cursor.
CREATE INDEX notifications_user_newest ON notifications (user_id, created_at DESC, id DESC);

-- Unread count and unread-only listing.
CREATE INDEX notifications_user_unread ON notifications (user_id, created_at DESC, id DESC)
    WHERE read_at IS NULL;
