//! The one D-Bus error type: every failure reaches callers as
//! `org.webpushd.Push1.Error.<Name>` with a human sentence.

use crate::push::PushError;

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.webpushd.Push1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidArgument(String),
    NotFound(String),
    KeyMismatch(String),
    AccessDenied(String),
    Unavailable(String),
    Failed(String),
}

impl From<PushError> for Error {
    fn from(e: PushError) -> Error {
        let text = e.to_string();
        match e {
            PushError::InvalidArgument(_) => Error::InvalidArgument(text),
            PushError::NotFound(_) => Error::NotFound(text),
            PushError::KeyMismatch => Error::KeyMismatch(text),
            PushError::AccessDenied(_) => Error::AccessDenied(text),
            PushError::Unavailable(_) => Error::Unavailable(text),
            PushError::Failed(_) => Error::Failed(text),
        }
    }
}

impl From<crate::ids::IdError> for Error {
    fn from(e: crate::ids::IdError) -> Error {
        Error::InvalidArgument(e.to_string())
    }
}

impl From<zbus::fdo::Error> for Error {
    fn from(e: zbus::fdo::Error) -> Error {
        Error::Failed(e.to_string())
    }
}
