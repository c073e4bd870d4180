//! The deadline a gRPC client sends in `grpc-timeout`, which the server enforces on the call's
//! response (as tonic's own server does): a call still running when it passes is answered with
//! `DEADLINE_EXCEEDED`.

use std::future::Future;
use std::time::Duration;

use http::{HeaderMap, Response};

/// The call's deadline from its `grpc-timeout` header: at most 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`). A missing or malformed header gives `None` (no deadline).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit_at = text.len().checked_sub(1)?;
    let (digits, unit) = text.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// The response of `call`, or `DEADLINE_EXCEEDED` if `deadline` passes first (the call is then
/// dropped).
pub async fn within<B: Default, E>(
    deadline: Option<Duration>,
    call: impl Future<Output = Result<Response<B>, E>>,
) -> Result<Response<B>, E> {
    match deadline {
        Some(deadline) => match tokio::time::timeout(deadline, call).await {
            Ok(response) => response,
            Err(_elapsed) => Ok(tonic::Status::deadline_exceeded("deadline exceeded").into_http()),
        },
        None => call.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_answered_deadline_exceeded() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, ()>(Response::new(String::from("late")))
        };
        let response = within(Some(Duration::from_millis(50)), slow).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");

        let fast = async { Ok::<_, ()>(Response::new(String::from("in time"))) };
        let response = within(Some(Duration::from_secs(1)), fast).await.unwrap();
        assert_eq!(response.body(), "in time");
        let unbounded = async { Ok::<_, ()>(Response::new(String::from("no deadline"))) };
        assert_eq!(within(None, unbounded).await.unwrap().body(), "no deadline");
    }

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn timeouts_parse_with_every_unit_and_refuse_the_rest() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "123456789S", "-1S", "1.5S", "10x", "1 S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
