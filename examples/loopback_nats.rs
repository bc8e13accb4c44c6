//! NATS on loopback only, for the benchmark tools: the URL's host checked as the client reads it
//! (so `nats://127.0.0.1:x@10.0.0.1` is refused), and no following of the other servers a NATS
//! server advertises, which need not be on loopback.

use std::net::IpAddr;

use anyhow::ensure;

/// Whether `url`, read as async-nats reads a server address, names a loopback host.
pub fn is_loopback_nats_url(url: &str) -> bool {
    let Ok(address) = url.parse::<async_nats::ServerAddr>() else {
        return false;
    };
    let host = address.host();
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Connects to the NATS server at `url`, refusing one that is not on loopback.
pub async fn connect_on_loopback(url: &str) -> anyhow::Result<async_nats::Client> {
    ensure!(
        is_loopback_nats_url(url),
        "refusing a non-loopback NATS server: {url}"
    );
    Ok(async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .connect(url)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_pass_as_the_client_reads_them() {
        assert!(is_loopback_nats_url("nats://127.0.0.1:4222"));
        assert!(is_loopback_nats_url("127.0.0.9"));
        assert!(is_loopback_nats_url("nats://localhost:4222"));
        assert!(is_loopback_nats_url("nats://[::1]:4222"));
        assert!(!is_loopback_nats_url("nats://10.0.0.1:4222"));
        assert!(!is_loopback_nats_url("nats://demo.nats.io:4222"));
        // The text before the first colon is a user name here; the host is 10.0.0.1.
        assert!(!is_loopback_nats_url("nats://127.0.0.1:x@10.0.0.1:4222"));
        assert!(!is_loopback_nats_url("nats://localhost:secret@10.0.0.1"));
        assert!(!is_loopback_nats_url("not a url at all"));
    }
}
