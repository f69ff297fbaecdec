//! An open-loop HTTP/1.1 load generator: requests go out on a fixed schedule (the offered rate),
//! whatever the server's speed, over a few keep-alive connections. Below saturation, the server
//! then does the same work per second in every mode, and the CPU it spends per request can be
//! compared across modes (wrk2 does this; it is not packaged in Debian).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// What one run of the generator saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests scheduled over the run.
    pub offered: u64,
    /// Responses received in full.
    pub completed: u64,
    /// Latencies from each request's scheduled time to its response's end (µs), sorted: time
    /// spent waiting behind a slow response counts, as it does for a real client.
    pub latencies_us: Vec<u64>,
}

impl Outcome {
    /// The `q` quantile of the latencies (0 when nothing completed).
    pub fn latency_us(&self, q: f64) -> u64 {
        let i =
            ((self.latencies_us.len() as f64 * q) as usize).min(self.latencies_us.len().saturating_sub(1));
        self.latencies_us.get(i).copied().unwrap_or(0)
    }
}

/// Offers `rate` GET requests per second for `path` to `addr` for `duration`, spread over
/// `connections` keep-alive connections (each sends its share on its own schedule).
pub fn offer(
    addr: SocketAddr,
    path: &str,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<Outcome> {
    if rate <= 0.0 || connections == 0 {
        bail!("the offered rate and the connections must be positive");
    }
    let period = Duration::from_secs_f64(connections as f64 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive\r\n\r\n");
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            let request = request.clone();
            // Each connection's schedule is shifted by its share of one period.
            let first = start + period.mul_f64(i as f64 / connections as f64);
            thread::spawn(move || connection(addr, &request, first, period, start + duration))
        })
        .collect();
    let mut outcome = Outcome::default();
    for worker in workers {
        let part = worker.join().map_err(|_| anyhow::anyhow!("a load connection panicked"))??;
        outcome.offered += part.offered;
        outcome.completed += part.completed;
        outcome.latencies_us.extend(part.latencies_us);
    }
    outcome.latencies_us.sort_unstable();
    Ok(outcome)
}

/// One connection's schedule: a request at `first`, then every `period`, until `end`.
fn connection(
    addr: SocketAddr,
    request: &str,
    first: Instant,
    period: Duration,
    end: Instant,
) -> anyhow::Result<Outcome> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut outcome = Outcome::default();
    let mut due = first;
    while due < end {
        outcome.offered += 1;
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => thread::sleep(wait),
            // A server slower than the offered rate: what is due after the end is not sent
            // (and counts as offered, not completed), so the run ends on time.
            None if Instant::now() >= end => {
                outcome.offered += ((end - due).as_secs_f64() / period.as_secs_f64()) as u64;
                break;
            }
            None => {}
        }
        writer.write_all(request.as_bytes()).context("sending a request")?;
        read_response(&mut reader)?;
        outcome.completed += 1;
        outcome.latencies_us.push(due.elapsed().as_micros() as u64);
        due += period;
    }
    Ok(outcome)
}

/// Reads one response with a Content-Length body (what node's http server sends for a Buffer).
fn read_response(reader: &mut impl BufRead) -> anyhow::Result<()> {
    let mut line = String::new();
    let mut length = None;
    let mut first = true;
    loop {
        line.clear();
        if reader.read_line(&mut line).context("reading a response")? == 0 {
            bail!("the server closed the connection");
        }
        if first {
            if !line.starts_with("HTTP/1.1 200") {
                bail!("unexpected status line {:?}", line.trim_end());
            }
            first = false;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse::<u64>().context("a bad Content-Length")?);
            }
        }
    }
    let length = length.context("a response without Content-Length")?;
    let copied = std::io::copy(&mut reader.take(length), &mut std::io::sink())?;
    if copied != length {
        bail!("a response body ended early");
    }
    Ok(())
}
