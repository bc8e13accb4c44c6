-- Notification ids are unique per user, not globally: idempotency is per (user_id, id), and one
-- user's id can never collide with, or reveal, another user's notification. SQLite cannot alter a
-- primary key, so the table is rebuilt (portable to PostgreSQL as written).
CREATE TABLE notifications_by_user (
    id         TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    type       TEXT   NOT NULL,
    content    TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    read_at    BIGINT,
    PRIMARY KEY (user_id, id)
);

INSERT INTO notifications_by_user (id, user_id, type, content, created_at, read_at)
    SELECT id, user_id, type, content, created_at, read_at FROM notifications;

DROP TABLE notifications;

ALTER TABLE notifications_by_user RENAME TO notifications;

CREATE INDEX notifications_user_newest ON notifications (user_id, created_at DESC, id DESC);

CREATE INDEX notifications_user_unread ON notifications (user_id, created_at DESC, id DESC)
    WHERE read_at IS NULL;
