//! A raw WebSocket client of a test server (spec §28): connect, send a packet, read the next.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::TestServer;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Only against a hang: nothing waits for time to pass.
pub const GUARD: Duration = Duration::from_secs(60);

/// `GET /_ws`, with the token in the upgrade's `Authorization` when given.
pub async fn connect(server: &TestServer, token: Option<&str>) -> Socket {
    let mut req = format!("ws://{}/_ws", server.addr)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

pub async fn send(ws: &mut Socket, packet: Value) {
    ws.send(Message::Text(packet.to_string().into()))
        .await
        .unwrap();
}

/// The next packet (pings and pongs skipped).
pub async fn recv(ws: &mut Socket) -> Value {
    let next = async {
        loop {
            match ws.next().await.expect("the socket is open").unwrap() {
                Message::Text(t) => return serde_json::from_str::<Value>(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a packet, got {other:?}"),
            }
        }
    };
    tokio::time::timeout(GUARD, next)
        .await
        .expect("a packet within the guard")
}
