-- The index: everything here is derived from the archive and can be rebuilt
-- with `kvm-digest reindex`, except the tables marked "state".

CREATE TABLE IF NOT EXISTS messages (
    seq          INTEGER PRIMARY KEY,   -- archive order, 1-based
    commit_id    TEXT NOT NULL UNIQUE,
    message_id   TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    subject      TEXT NOT NULL,         -- full subject, unfolded and decoded
    base_subject TEXT NOT NULL,         -- without reply prefixes
    title        TEXT NOT NULL,         -- without reply prefixes and [tags]
    tags         TEXT NOT NULL,         -- bracket words, space separated
    version      INTEGER NOT NULL,
    counter      INTEGER,               -- n of [PATCH n/m]
    total        INTEGER,               -- m of [PATCH n/m]
    from_name    TEXT NOT NULL,         -- header From
    from_addr    TEXT NOT NULL,
    from_key     TEXT NOT NULL,         -- lower-cased from_addr
    author_name  TEXT NOT NULL,         -- in-body From when present
    author_addr  TEXT NOT NULL,
    date         INTEGER,               -- Date header, epoch seconds
    received     INTEGER,               -- first Received header, else Date
    list_id      TEXT NOT NULL,
    kind         TEXT NOT NULL
                 CHECK (kind IN ('patch','cover','reply','pull','notice','other')),
    is_entry     INTEGER NOT NULL,      -- gets a digest entry (never a re-delivery)
    is_dup       INTEGER NOT NULL,      -- a copy: an earlier patch, cover letter or
                                        -- pull has its subject, sender and text
    dup_of       INTEGER,               -- the seq of that original (its series is this one's)
    text_hash    TEXT NOT NULL DEFAULT '', -- decoded body text, white space removed
    redelivered  INTEGER NOT NULL DEFAULT 0, -- an earlier row has its Message-ID and content
    parent_id    TEXT,                  -- In-Reply-To, else last References id
    thread_id    TEXT NOT NULL,         -- root of the References chain
    series_id    TEXT,                  -- see series.py
    body         TEXT NOT NULL          -- commit message through the diffstat
);
CREATE INDEX IF NOT EXISTS messages_message_id ON messages(message_id);
CREATE INDEX IF NOT EXISTS messages_received ON messages(received);
CREATE INDEX IF NOT EXISTS messages_series ON messages(series_id);
CREATE INDEX IF NOT EXISTS messages_thread ON messages(thread_id);
CREATE INDEX IF NOT EXISTS messages_sender_series
    ON messages(from_key, version, total) WHERE kind IN ('patch', 'cover');
CREATE INDEX IF NOT EXISTS messages_base_subject
    ON messages(base_subject) WHERE kind IN ('patch', 'cover');
CREATE INDEX IF NOT EXISTS messages_copies
    ON messages(subject, from_key, text_hash) WHERE kind IN ('patch', 'cover', 'pull');
CREATE INDEX IF NOT EXISTS messages_dup_of ON messages(dup_of) WHERE dup_of IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_parent ON messages(parent_id);

-- Every id a message points at, nearest first (0 = its parent).
CREATE TABLE IF NOT EXISTS refs (
    seq INTEGER NOT NULL REFERENCES messages(seq) ON DELETE CASCADE,
    pos INTEGER NOT NULL,
    ref TEXT NOT NULL,
    PRIMARY KEY (seq, pos)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_ref ON refs(ref);

-- Every file path a patch, cover letter or pull request touches, from its
-- diff headers (both names of a rename); `dfn:` queries read it.
CREATE TABLE IF NOT EXISTS paths (
    seq  INTEGER NOT NULL REFERENCES messages(seq) ON DELETE CASCADE,
    path TEXT NOT NULL,
    PRIMARY KEY (seq, path)
) WITHOUT ROWID;

-- Whom each patch and cover letter was sent to, for "For you": every To/Cc
-- mailbox in the canonical form the command limits use (bot/desk/addresses.py
-- limit_key: lower-cased, no +tag), so `Jane+kvm@Example.ORG` is
-- jane@example.org. Each address is stored once and referred to by number
-- (a list's Cc lines name the same few hundred people: a third of the size).
-- Replies are left out: no rule asks whom they went to.
CREATE TABLE IF NOT EXISTS mailboxes (
    id  INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS recipients (
    seq     INTEGER NOT NULL REFERENCES messages(seq) ON DELETE CASCADE,
    mailbox INTEGER NOT NULL REFERENCES mailboxes(id),
    PRIMARY KEY (seq, mailbox)
) WITHOUT ROWID;

-- Facts read from each message's own text when it is indexed (bot/digest/
-- trailers.py). They are keyed by message, not by series: which series a
-- message belongs to is read from messages.series_id when a digest is built,
-- so these stay right however late a message's series is resolved.
-- A Reviewed-by/Acked-by/Tested-by line in a reply (who_key: lower-cased address).
CREATE TABLE IF NOT EXISTS trailers (
    seq      INTEGER NOT NULL REFERENCES messages(seq) ON DELETE CASCADE,
    kind     TEXT NOT NULL CHECK (kind IN ('Reviewed-by', 'Acked-by', 'Tested-by')),
    who_key  TEXT NOT NULL,
    who_name TEXT NOT NULL,
    PRIMARY KEY (seq, kind, who_key)
) WITHOUT ROWID;

-- A reply whose own text says the patches were applied, queued or pushed:
-- by whom when the note names someone else than its sender (the patchwork
-- bot's "by Jakub Kicinski"), and where to when it names a tree or branch.
CREATE TABLE IF NOT EXISTS applied (
    seq      INTEGER PRIMARY KEY REFERENCES messages(seq) ON DELETE CASCADE,
    who_name TEXT NOT NULL DEFAULT '',
    dest     TEXT NOT NULL DEFAULT ''
);

-- What names a piece of work across its versions: each patch or cover
-- letter's sender and folded title, and b4's change-id when present. A
-- series' title is that of its cover letter, else of its lowest patch.
CREATE TABLE IF NOT EXISTS works (
    seq       INTEGER PRIMARY KEY REFERENCES messages(seq) ON DELETE CASCADE,
    from_key  TEXT NOT NULL,
    title_key TEXT NOT NULL,
    change_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS works_title ON works(from_key, title_key);
-- A series' patches and cover letter without its replies (full digests read
-- the shown message and the posting date of series with long discussions).
CREATE INDEX IF NOT EXISTS messages_series_patchy
    ON messages(series_id, counter) WHERE kind IN ('patch', 'cover');
-- A series' replies, without reading their rows (trailers and applied marks
-- are found by probing those tables with each reply's seq).
CREATE INDEX IF NOT EXISTS messages_series_replies
    ON messages(series_id, seq) WHERE kind = 'reply';
-- The replies of a range and their series, without reading message rows
-- (reply counts of the patch list and the discussion on earlier series).
CREATE INDEX IF NOT EXISTS messages_replies
    ON messages(seq, series_id) WHERE kind = 'reply';
CREATE INDEX IF NOT EXISTS works_change_id ON works(change_id) WHERE change_id != '';

CREATE VIEW IF NOT EXISTS series AS
    SELECT series_id,
           MIN(seq) AS first_seq,
           MAX(version) AS version,
           MAX(total) AS total,
           COUNT(DISTINCT CASE WHEN kind = 'patch' THEN COALESCE(counter, 1) END)
               AS patches,
           MAX(CASE WHEN kind = 'cover' THEN message_id END) AS cover_id,
           (SELECT from_name || ' <' || from_addr || '>' FROM messages f
             WHERE f.series_id = m.series_id AND f.kind IN ('patch', 'cover')
             ORDER BY f.seq LIMIT 1) AS submitter,
           SUM(kind = 'reply') AS replies
      FROM messages m
     WHERE series_id IS NOT NULL
     GROUP BY series_id;

CREATE VIEW IF NOT EXISTS threads AS
    SELECT thread_id, MIN(seq) AS first_seq, MAX(seq) AS last_seq,
           COUNT(*) AS messages
      FROM messages GROUP BY thread_id;

-- Positions and settings ("state" for the keys that say so).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- State: where each import source was read up to.
CREATE TABLE IF NOT EXISTS sources (
    source   TEXT PRIMARY KEY,
    position TEXT NOT NULL
);

-- State: how far each IMAP mailbox was read, saved with the messages it
-- brought, so a restart resumes exactly where the last one stopped.
CREATE TABLE IF NOT EXISTS imap_state (
    account     TEXT PRIMARY KEY,       -- user@host/folder
    uidvalidity INTEGER NOT NULL,
    last_uid    INTEGER NOT NULL
);

-- State: digest subscribers. Addresses are stored lower-cased.
CREATE TABLE IF NOT EXISTS subscribers (
    address       TEXT PRIMARY KEY,
    schedule      TEXT NOT NULL DEFAULT 'daily',
    status        TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'unsubscribed')),
    created       INTEGER NOT NULL,
    changed       INTEGER NOT NULL,
    hard_failures INTEGER NOT NULL DEFAULT 0,
    unsub_secret  TEXT,                 -- in List-Unsubscribe: bot+unsubscribe-<secret>@
    topic         TEXT NOT NULL DEFAULT '', -- a query (bot/digest/query.py); '' = all
    style         TEXT NOT NULL DEFAULT '', -- 'full', 'classic'; '' = [digest] style
    personal      TEXT NOT NULL DEFAULT ''  -- 'on', 'off' ("For you"); '' = [digest] personal
);
CREATE UNIQUE INDEX IF NOT EXISTS subscribers_unsub_secret ON subscribers(unsub_secret);

-- State: bounce scores (bot/delivery/bounces.py), one row per address that
-- bounced. A score decays: a bounce after [bounces] stale_days starts again at 1.
CREATE TABLE IF NOT EXISTS bounces (
    address     TEXT PRIMARY KEY,       -- lower-cased, as in subscribers
    score       INTEGER NOT NULL,       -- days with a bounce, at most one point a day
    last_bounce INTEGER NOT NULL,       -- epoch seconds
    last_day    TEXT NOT NULL,          -- UTC date of last_bounce, YYYY-MM-DD
    disabled_at INTEGER                 -- when bouncing disabled it (and it was told)
);

-- State: confirmation tokens (subscribe, unsubscribe, a digest for a
-- non-subscriber), stored hashed, single use, one pending per action and
-- canonical address (limit_key).
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    address    TEXT NOT NULL,
    schedule   TEXT NOT NULL,
    expires    INTEGER NOT NULL,
    action     TEXT NOT NULL DEFAULT 'subscribe',  -- subscribe, unsubscribe, digest
    args       TEXT NOT NULL DEFAULT '',           -- the digest request's arguments
    limit_key  TEXT NOT NULL DEFAULT '',
    topic      TEXT NOT NULL DEFAULT '',
    style      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tokens_pending ON tokens(limit_key, action);

-- State: where each periodic schedule's last digest ended. Positions are
-- renumbered by a rebuild, so the place is its commit, the message it holds
-- and its arrival, found again at every run (bot/digest/ranges.py, locate).
CREATE TABLE IF NOT EXISTS schedules (
    name     TEXT PRIMARY KEY,
    end_seq  INTEGER NOT NULL,          -- the position as last known (a hint)
    end_id   TEXT NOT NULL,             -- the commit
    last_run INTEGER NOT NULL,
    end_message_id TEXT NOT NULL DEFAULT '', -- its Message-ID and content_hash
    end_hash       TEXT NOT NULL DEFAULT '',
    end_received   INTEGER                   -- its arrival time
);

-- State: each digest rendered once, whatever the number of subscribers.
CREATE TABLE IF NOT EXISTS digests (
    id        INTEGER PRIMARY KEY,
    schedule  TEXT NOT NULL,
    start_id  TEXT NOT NULL,
    end_id    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    body      TEXT NOT NULL,
    created   INTEGER NOT NULL,
    topic     TEXT NOT NULL DEFAULT '', -- the query it was filtered by
    style     TEXT NOT NULL DEFAULT ''  -- full, classic, brief ('' before it was kept)
);

-- State: every outgoing mail, written before it is sent.
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL,          -- digest, reply
    recipient    TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    digest_id    INTEGER REFERENCES digests(id),
    message      BLOB,                   -- the whole mail, for non-digests
    status       TEXT NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'sent', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_error   TEXT NOT NULL DEFAULT '',
    created      INTEGER NOT NULL,
    sent_at      INTEGER,
    attempted    INTEGER,                -- an attempt began then and has no outcome yet
    personal     TEXT NOT NULL DEFAULT '' -- a digest's "For you" section for this reader
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_attempt);
CREATE INDEX IF NOT EXISTS outbox_recipient ON outbox(recipient, created);
-- Which digest a reader's reply answers (bot/desk/digest_reply.py).
CREATE INDEX IF NOT EXISTS outbox_message_id ON outbox(message_id);

-- State: command mail, queued durably before the server says 250. Once
-- handled, only what the limits count is kept: the raw mail is emptied
-- (but for mail whose handling failed, kept for `kvm-digest failed`).
CREATE TABLE IF NOT EXISTS inbound (
    id       INTEGER PRIMARY KEY,
    received INTEGER NOT NULL,
    sender   TEXT NOT NULL,              -- envelope sender ('' for bounces)
    rcpt     TEXT NOT NULL,              -- the bot address it came to
    raw      BLOB NOT NULL,              -- X'' once handled
    raw_hash TEXT NOT NULL UNIQUE,       -- the same mail fetched twice is one
    done     INTEGER NOT NULL DEFAULT 0, -- 1 once handled (answered, or not)
    handled  INTEGER,                    -- when it was handled (for retention)
    error    TEXT,                       -- why handling failed; NULL if it did not
    limit_key      TEXT NOT NULL DEFAULT '',  -- canonical From (addresses.limit_key)
    deferred_until INTEGER,              -- over a limit: answered at this time
    answered       INTEGER,              -- when the reply was queued
    reply_bytes    INTEGER NOT NULL DEFAULT 0, -- its size; limits count these
    sender_key     TEXT NOT NULL DEFAULT '',  -- the envelope sender's limit_key
    message_id     TEXT NOT NULL DEFAULT '',
    size           INTEGER NOT NULL DEFAULT 0, -- bytes of the raw mail as it came
    outcome        TEXT NOT NULL DEFAULT ''   -- reply, not-understood, robot, bounce,
                                              -- pending, dropped, repeat, failed
);
CREATE INDEX IF NOT EXISTS inbound_pending ON inbound(done, sender);
CREATE INDEX IF NOT EXISTS inbound_answered ON inbound(answered, limit_key);
CREATE INDEX IF NOT EXISTS inbound_sender ON inbound(sender_key, received);

-- State: every command mail ever handled, by hashes of its Message-ID and
-- of its content (16 bytes each), kept for good after its inbound row is
-- purged: no command mail is run twice, whether fetched again (a new
-- UIDVALIDITY, a new [imap] host) or delivered twice (bot/desk/inbound.py).
CREATE TABLE IF NOT EXISTS seen_mail (
    key     BLOB PRIMARY KEY,
    handled INTEGER NOT NULL
) WITHOUT ROWID;

-- State: list mail that could not be parsed or stored, kept with its
-- reason for the admin (`kvm-digest failed`), so nothing is lost silently.
CREATE TABLE IF NOT EXISTS failures (
    id       INTEGER PRIMARY KEY,
    created  INTEGER NOT NULL,
    source   TEXT NOT NULL,              -- IMAP folder and UID, import file and position
    reason   TEXT NOT NULL,
    raw      BLOB NOT NULL,
    raw_hash TEXT NOT NULL UNIQUE
);

-- State: what the running daemon last knew of each lasting check (relay,
-- intake, ...), for `kvm-digest health` (bot/health.py). Not derived from
-- git, and not worth a backup: the next daemon start writes it anew.
CREATE TABLE IF NOT EXISTS health (
    check_name TEXT PRIMARY KEY,
    ok         INTEGER NOT NULL,        -- 1 working, 0 failing
    since      INTEGER NOT NULL,        -- when this state began
    updated    INTEGER NOT NULL,        -- when it was last confirmed
    count      INTEGER NOT NULL DEFAULT 0, -- failures since `since`
    detail     TEXT NOT NULL DEFAULT ''
);

-- State: when a mailbox was last told something the bot says at most once a
-- day (kind 'deferred': its answer waits for a limit, and when it will come).
CREATE TABLE IF NOT EXISTS notices (
    limit_key TEXT NOT NULL,                -- canonical address (addresses.limit_key)
    kind      TEXT NOT NULL,
    sent      INTEGER NOT NULL,             -- epoch seconds
    PRIMARY KEY (limit_key, kind)
) WITHOUT ROWID;
