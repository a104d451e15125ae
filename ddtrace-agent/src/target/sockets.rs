//! TCP connections a process already has open when the agent attaches: a live service holds
//! keep-alive connections (from a load balancer, to its upstreams) that may live for hours. The
//! kernel programs only learn sockets from accept and connect, so these are found here, from
//! `/proc/<pid>/fd` (socket inodes) and the process's view of `/proc/net/tcp{,6}`.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// Which side of the connection the process is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionSide {
    /// Its local port is one a socket listens on: it accepted the connection.
    Accepted,
    Connected,
}

/// An established TCP connection of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenConnection {
    pub fd: u32,
    pub side: ConnectionSide,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// `TCP_ESTABLISHED` and `TCP_LISTEN` in the `st` column.
const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0a;

/// The established TCP connections of `pid` (empty when its files cannot be read: it exited, or
/// the agent lacks the rights, which attaching already reported).
pub fn open_tcp_connections(pid: u32) -> Vec<OpenConnection> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut fd_of_inode = HashMap::new();
    for entry in entries.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(link) = std::fs::read_link(entry.path()) else { continue };
        if let Some(inode) = socket_inode(&link.to_string_lossy()) {
            fd_of_inode.insert(inode, fd);
        }
    }
    if fd_of_inode.is_empty() {
        return Vec::new();
    }
    let mut rows = Vec::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            rows.extend(text.lines().skip(1).filter_map(parse_tcp_row));
        }
    }
    connections_of(&rows, &fd_of_inode)
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// One row of `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TcpRow {
    local: SocketAddr,
    peer: SocketAddr,
    state: u8,
    inode: u64,
}

/// `  0: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000 0 4242 ...`
fn parse_tcp_row(line: &str) -> Option<TcpRow> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 {
        return None;
    }
    Some(TcpRow {
        local: parse_address(fields[1])?,
        peer: parse_address(fields[2])?,
        state: u8::from_str_radix(fields[3], 16).ok()?,
        inode: fields[9].parse().ok()?,
    })
}

/// `ADDR:PORT` in hex: the address as the kernel's 32-bit words in host (little-endian) order,
/// the port as a plain number.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<u32>> = (0..address.len() / 8)
        .map(|i| address.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()))
        .collect();
    let words = words?;
    let ip = match words.as_slice() {
        [word] => IpAddr::V4(Ipv4Addr::from(word.to_le_bytes())),
        [a, b, c, d] => {
            let mut octets = [0u8; 16];
            for (i, word) in [a, b, c, d].into_iter().enumerate() {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The established connections among `rows` that belong to the process (their inode is one of
/// its fds). A connection whose local port some socket of the namespace listens on was accepted.
fn connections_of(rows: &[TcpRow], fd_of_inode: &HashMap<u64, u32>) -> Vec<OpenConnection> {
    let listening: HashSet<u16> = rows.iter().filter(|r| r.state == LISTEN).map(|r| r.local.port()).collect();
    rows.iter()
        .filter(|row| row.state == ESTABLISHED)
        .filter_map(|row| {
            let fd = *fd_of_inode.get(&row.inode)?;
            let side = if listening.contains(&row.local.port()) {
                ConnectionSide::Accepted
            } else {
                ConnectionSide::Connected
            };
            Some(OpenConnection { fd, side, local: row.local, peer: row.peer })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 101 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C351 0100007F:0050 01 00000000:00000000 00:00000000 00000000     0        0 102 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C352 0100007F:0050 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 20 4 30 10 -1";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 103 1 0000000000000000 20 4 30 10 -1";

    #[test]
    fn reads_established_connections_of_the_process_with_their_side() {
        let rows: Vec<TcpRow> = TCP.lines().chain(TCP6.lines()).filter_map(parse_tcp_row).collect();
        assert_eq!(rows.len(), 5);
        let fds = HashMap::from([(100, 3), (101, 7), (102, 8), (103, 9)]);
        let connections = connections_of(&rows, &fds);
        // The listener (3) is not a connection; inode 999 belongs to another process.
        assert_eq!(
            connections,
            [
                OpenConnection {
                    fd: 7,
                    side: ConnectionSide::Accepted,
                    local: "127.0.0.1:8080".parse().unwrap(),
                    peer: "127.0.0.1:50000".parse().unwrap(),
                },
                OpenConnection {
                    fd: 8,
                    side: ConnectionSide::Connected,
                    local: "127.0.0.1:50001".parse().unwrap(),
                    peer: "127.0.0.1:80".parse().unwrap(),
                },
                OpenConnection {
                    fd: 9,
                    side: ConnectionSide::Connected,
                    local: "[::1]:8081".parse().unwrap(),
                    peer: "[::1]:54321".parse().unwrap(),
                },
            ]
        );
    }

    #[test]
    fn finds_this_processs_own_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let found = open_tcp_connections(std::process::id());
        let accepted = found.iter().find(|c| c.peer == client.local_addr().unwrap()).expect("accepted side");
        assert_eq!(accepted.side, ConnectionSide::Accepted);
        assert_eq!(accepted.local, server.local_addr().unwrap());
        let connected = found.iter().find(|c| c.local == client.local_addr().unwrap()).expect("connected side");
        assert_eq!(connected.side, ConnectionSide::Connected);
    }
}
