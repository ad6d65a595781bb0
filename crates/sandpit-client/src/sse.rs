//! Server-Sent Events answers: decoding (by `eventsource-stream`) into `(event, data)`
//! pairs, the `error` event into an [`Error`], and typing of the other events.

use eventsource_stream::Eventsource;
use futures::{future, StreamExt};
use serde::de::DeserializeOwned;

use crate::{Error, EventStream, Result};

/// One event: its name (`message` when the server gave none) and its data.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub event: String,
    pub data: String,
}

impl Event {
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.data).map_err(|e| {
            Error::new(
                "invalid_response",
                format!("event '{}' has bad data ({e}): {}", self.event, self.data),
            )
        })
    }
}

/// The events of an SSE answer; an `error` event becomes an `Err` item.
pub(crate) fn events(resp: reqwest::Response) -> EventStream<Event> {
    resp.bytes_stream()
        .eventsource()
        .map(|item| match item {
            Ok(ev) if ev.event == "error" => {
                #[derive(serde::Deserialize)]
                struct Failure {
                    code: String,
                    message: String,
                }
                Err(match serde_json::from_str::<Failure>(&ev.data) {
                    Ok(f) => Error::new(f.code, f.message),
                    Err(_) => Error::new("stream_error", ev.data),
                })
            }
            Ok(ev) => Ok(Event {
                event: ev.event,
                data: ev.data,
            }),
            Err(e) => Err(Error::new(
                "connection_error",
                format!("reading the event stream: {e}"),
            )),
        })
        .boxed()
}

/// Types each event with `f`, which skips (`Ok(None)`) events it does not know.
pub(crate) fn typed<T, F>(events: EventStream<Event>, f: F) -> EventStream<T>
where
    T: Send + 'static,
    F: Fn(Event) -> Result<Option<T>> + Send + 'static,
{
    events
        .filter_map(move |item| future::ready(item.and_then(&f).transpose()))
        .boxed()
}
