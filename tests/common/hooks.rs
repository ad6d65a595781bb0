//! Webhook receivers on 127.0.0.1 for the tests: a thread that accepts each POST, answers,
//! and hands the request (path, lower-cased headers, raw body) to the test over a channel.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

/// One request a receiver got, and the status it answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub answered: u16,
}

impl Delivery {
    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("delivery body is JSON")
    }

    /// A header that must be there.
    #[track_caller]
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("delivery without {name}: {self:?}"))
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body: its path, headers and body.
pub fn read_request(stream: &TcpStream) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((path, headers, body))
}

/// A receiver that answers 500 to its first `failures` requests and 200 after; answers its
/// port and the channel of what it got.
pub fn receiver(failures: usize) -> (u16, mpsc::Receiver<Delivery>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut seen = 0;
    let rx = receiver_answering(listener, move || {
        seen += 1;
        if seen <= failures {
            500
        } else {
            200
        }
    });
    (port, rx)
}

/// A receiver on `listener` answering each request with the status `answer` gives; the
/// channel of what it got.
pub fn receiver_answering(
    listener: TcpListener,
    mut answer: impl FnMut() -> u16 + Send + 'static,
) -> mpsc::Receiver<Delivery> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let Some((path, headers, body)) = read_request(&stream) else {
                continue;
            };
            let answered = answer();
            let _ = write!(
                stream,
                "HTTP/1.1 {answered} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let d = Delivery {
                path,
                headers,
                body,
                answered,
            };
            if tx.send(d).is_err() {
                return;
            }
        }
    });
    rx
}
