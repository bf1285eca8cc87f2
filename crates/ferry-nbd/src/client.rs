//! A bare blocking NBD client speaking simple replies: for tests that send
//! requests no real client would (and for checking a server by hand). It
//! panics on anything unexpected; it is not for production use.

use std::net::ToSocketAddrs;

/// A bare NBD client speaking simple replies, for requests no real client
/// would send.
pub struct RawClient {
    pub sock: std::net::TcpStream,
    /// Bytes a read reply carries, by cookie.
    pending_reads: std::collections::HashMap<u64, usize>,
}

impl RawClient {
    /// Greeting, client flags, then NBD_OPT_GO for `export`.
    pub fn connect(addr: impl ToSocketAddrs, export: &str) -> RawClient {
        use crate::proto::*;
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        let mut greet = [0u8; GREETING_LEN];
        sock.read_exact(&mut greet).unwrap();
        assert_eq!(&greet[..8], b"NBDMAGIC");
        sock.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
        let mut data = (export.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut opt = IHAVEOPT.to_be_bytes().to_vec();
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(data.len() as u32).to_be_bytes());
        opt.extend_from_slice(&data);
        sock.write_all(&opt).unwrap();
        loop {
            let mut h = [0u8; 20];
            sock.read_exact(&mut h).unwrap();
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            let mut body = vec![0u8; len as usize];
            sock.read_exact(&mut body).unwrap();
            match kind {
                REP_ACK => break,
                REP_INFO => {}
                other => panic!(
                    "GO {export}: reply {other:#x}: {}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
        RawClient {
            sock,
            pending_reads: Default::default(),
        }
    }

    pub fn send(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        use std::io::Write;
        let req = crate::proto::Request {
            flags,
            command,
            cookie,
            offset,
            len,
        };
        let mut bytes = crate::proto::encode_request(&req).to_vec();
        bytes.extend_from_slice(payload);
        self.sock.write_all(&bytes).unwrap();
        if command == crate::proto::CMD_READ {
            self.pending_reads.insert(cookie, len as usize);
        }
    }

    /// The next reply: cookie, error, data (for a successful read).
    pub fn reply(&mut self) -> std::io::Result<(u64, u32, Vec<u8>)> {
        use std::io::Read;
        let mut h = [0u8; 16];
        self.sock.read_exact(&mut h)?;
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            crate::proto::SIMPLE_REPLY_MAGIC
        );
        let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let mut data = Vec::new();
        if let Some(len) = self.pending_reads.remove(&cookie)
            && error == 0
        {
            data.resize(len, 0);
            self.sock.read_exact(&mut data)?;
        }
        Ok((cookie, error, data))
    }

    /// Sends one request and waits for its reply.
    pub fn call(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> (u32, Vec<u8>) {
        self.send(command, flags, 1, offset, len, payload);
        let (cookie, error, data) = self.reply().unwrap();
        assert_eq!(cookie, 1);
        (error, data)
    }

    /// True when the server closed the connection (a read finds its end)
    /// instead of sending anything more.
    pub fn reply_or_eof(&mut self) -> bool {
        use std::io::Read;
        let mut byte = [0u8; 1];
        matches!(self.sock.read(&mut byte), Ok(0) | Err(_))
    }

    pub fn disconnect(mut self) {
        self.send(crate::proto::CMD_DISC, 0, 0, 0, 0, &[]);
    }
}
