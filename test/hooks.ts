/** Root hooks: the shared test database is closed once, after every test file has run. */
import { closeTestContext } from './helpers.js';

export const mochaHooks = {
  async afterAll(): Promise<void> {
    await closeTestContext();
  },
};
