//! The closed code sets of `model` (roles, deciders, presence, alarm kinds, outbox states) as
//! SQL values: stored by name, read back through `parse` (the tables' `CHECK` constraints hold
//! the same sets, so an unknown name means a damaged file and is reported, never guessed).

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::model::{AlarmKind, Decider, OutboxState, Presence, Role};

macro_rules! sql_by_name {
    ($($t:ty),+) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let name = value.as_str()?;
                <$t>::parse(name).ok_or_else(|| {
                    FromSqlError::Other(format!("unknown {} `{name}`", stringify!($t)).into())
                })
            }
        }
    )+};
}

sql_by_name!(Role, Decider, Presence, AlarmKind, OutboxState);
