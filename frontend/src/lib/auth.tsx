// Who is signed in. The session cookie is HttpOnly; the CSRF token lives in memory
// only and comes back from GET /api/me after a reload.

import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState, type ReactNode } from "react";
import { api, ApiError, setCsrfToken, setUnauthorizedHandler } from "./api";
import type { Me } from "./types";

type AuthState =
  | { status: "loading" }
  | { status: "signed-out"; expired?: boolean; problem?: string }
  | { status: "signed-in"; user: Me };

interface AuthApi {
  state: AuthState;
  user: Me | null;
  signIn(token: string): Promise<void>;
  signOut(): Promise<void>;
  /** Run before signing out (e.g. end a live call). */
  setBeforeSignOut(fn: (() => Promise<void>) | null): void;
}

const AuthContext = createContext<AuthApi | null>(null);

export function AuthProvider({ children }: { children: ReactNode }) {
  const [state, setState] = useState<AuthState>({ status: "loading" });
  const beforeSignOut = useRef<(() => Promise<void>) | null>(null);

  useEffect(() => {
    let cancelled = false;
    api
      .me()
      .then((me) => {
        if (cancelled) return;
        setCsrfToken(me.csrf_token ?? null);
        setState({ status: "signed-in", user: me });
      })
      .catch((error: unknown) => {
        if (cancelled) return;
        const unreachable = error instanceof ApiError && error.status !== 401;
        setState({
          status: "signed-out",
          problem: unreachable ? "The server could not be reached; sign in when it is back." : undefined,
        });
      });
    return () => {
      cancelled = true;
    };
  }, []);

  useEffect(() => {
    setUnauthorizedHandler(() => {
      setCsrfToken(null);
      setState((s) => (s.status === "signed-in" ? { status: "signed-out", expired: true } : s));
    });
    return () => setUnauthorizedHandler(null);
  }, []);

  const signIn = useCallback(async (token: string) => {
    const me = await api.login(token.trim());
    setCsrfToken(me.csrf_token ?? null);
    setState({ status: "signed-in", user: me });
  }, []);

  const signOut = useCallback(async () => {
    try {
      await beforeSignOut.current?.();
    } catch {
      // ending a call is best effort here
    }
    try {
      await api.logout();
    } catch {
      // the cookie session may be gone already
    }
    setCsrfToken(null);
    setState({ status: "signed-out" });
  }, []);

  const value = useMemo<AuthApi>(
    () => ({
      state,
      user: state.status === "signed-in" ? state.user : null,
      signIn,
      signOut,
      setBeforeSignOut: (fn) => {
        beforeSignOut.current = fn;
      },
    }),
    [state, signIn, signOut],
  );
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): AuthApi {
  const value = useContext(AuthContext);
  if (!value) throw new Error("useAuth outside AuthProvider");
  return value;
}
