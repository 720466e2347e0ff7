//! Wanted files: ask once, get it the moment someone shares it.
//!
//! A want names a file (its id, or an exact name) or a query (words, as a
//! search), and says whether to download what appears. Wants live in the
//! data folder (`book`), so they survive a restart. The PServer keeps one
//! Watch stream open at the directory with every want still waiting
//! (`watch`): the directory pushes an event the moment a holder appears,
//! so nothing polls while nothing happens. The stream is kept open across
//! a central's failure (opened again at the next central of the list),
//! and each time it opens the wants it did not cover yet are checked once
//! with Locate (a query with Search), so nothing published meanwhile is
//! missed.
//!
//! What an event does (`react`): a wanted id, an exact name carried by one
//! content, or (with download) a query's match starts the normal download
//! job, with the holders the event brought (no lookup); the want ends
//! (`done`) once the file is in place. A name carried by several contents
//! never downloads: it notifies with the candidates. A notify-only want
//! notifies each file it matches and keeps watching. Every step is a
//! notice (`GET /api/v1/events`, and a POST to `PSERVER_NOTIFY_URL`:
//! `notify`).
//!
//! Layout: `handle` the [`Wants`] handle (add, list, remove, notices);
//! `book` the list on disk and the parsing of a request; `watch` the
//! stream's loop; `react` what an event or a check does; `notify` the
//! webhook. The loop and the reactions are methods of the handle, in
//! sibling files; nothing here but this map.

mod book;
mod handle;
mod notify;
mod react;
mod watch;

pub(crate) use book::BadWant;
pub(crate) use handle::Wants;
